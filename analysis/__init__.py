"""Analysis of FSRF studies: reads results (MLflow runs, the studies' parquet tables), never trains.

Data flows one way (STYLE.md): ``load`` turns MLflow runs or parquet into polars tables; ``tables``,
``robustness``, ``tuning`` and ``probe`` are pure functions of those tables and arrays (``uncertainty``:
the bootstrap intervals and probability of improvement behind them); ``figures`` draws them; ``report``
is the command that puts everything into one HTML page and logs it to MLflow.
"""
