"""analysis/report.py end to end on the known store of test_analysis.py: files, MLflow artifacts, the
rendered page in headless Chromium (DOM and a screenshot), and one-line errors with exit code 2."""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from test_analysis import UNK_CURVATURE, study, text_study  # noqa: E402,F401  (the session-scoped stores)

WINDOW = (1400, 900)


def report_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "analysis" / "report.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def built(study, tmp_path_factory):
    """The full report, built in-process (the entry point's own process is tested on bad input below;
    a second interpreter would spend most of its time importing what this one has imported)."""
    from analysis import report

    out = tmp_path_factory.mktemp("reports") / "robust-test"
    assert report.main(["--robustness-run", study["parent"], "--tracking-uri", study["uri"],
                        "--study-dir", str(study["tune_dir"]), "--out", str(out), "--extra-metrics", "MAE"]) == 0
    return out


def test_report_files_and_artifacts(study, built):
    assert (built / "report.html").is_file()
    assert not list(built.parent.glob(".*tmp*"))  # the temporary folder was renamed, nothing left over
    for name in ("curves", "table1_bars_Non0_F1_score", "overlap", "embedding", "tuning_best_so_far",
                 "tuning_importance", "tuning_parallel"):
        for ext in ("png", "svg"):
            assert (built / "figures" / f"{name}.{ext}").stat().st_size > 1000, f"{name}.{ext}"
    for name in ("table1_Non0_F1_score", "table1_MAE", "table2_Non0_F1_score", "uncertainty_Non0_F1_score"):
        for ext in ("csv", "md", "tex"):
            assert (built / "tables" / f"{name}.{ext}").is_file()
    for name in ("runs", "curves_Non0_F1_score", "robustness_Non0_F1_score", "overlap_Non0_F1_score", "probe_r2",
                 "tuning_importance", "configs_per_variant", "table1_Non0_F1_score_pvalues"):
        assert (built / "tables" / f"{name}.csv").is_file(), name
    versions = json.loads((built / "versions.json").read_text())
    assert {"python", "torch", "ray", "mlflow", "optuna", "polars", "pot", "fsrf"} <= set(versions)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=study["uri"])
    logged = {Path(a.path).name for a in client.list_artifacts(study["parent"], "report")}
    assert {"report.html", "figures", "tables", "versions.json", "configs.json"} <= logged
    figs = {Path(a.path).name for a in client.list_artifacts(study["parent"], "report/figures")}
    assert {"curves.png", "curves.svg"} <= figs


def test_cost_and_provenance_section(built):
    """Per-variant costs from the fixture's known values (100 + 10 * seed CPU-s, seeds 0..2) and the
    manifests' commit and data fingerprint."""
    import polars as pl

    cost = pl.read_csv(built / "tables" / "cost_per_variant.csv")
    row = cost.filter(pl.col("variant") == "no_dhf").row(0, named=True)
    assert row["runs"] == 3 and row["cpu_s_per_run"] == 110.0 and row["cpu_s_std"] == 10.0
    assert row["cpu_s_total"] == 330.0 and row["wall_s_per_run"] == 51.0 and row["mean_best_epoch"] == 2.0
    page = (built / "report.html").read_text()
    total = cost["cpu_s_total"].sum()
    assert f"used {(total + 5) / 3600:.2f} CPU-hours" in page and "10.0 minutes of wall time" in page
    assert "<code>c0ffee1</code>" in page and "<code>f00dfeed</code>" in page


def test_report_text_has_the_numbers(built):
    page = (built / "report.html").read_text()
    # FSRF avg_missing (percent) and its AUC 0.85 - 0.3 / 2 = 0.700 appear in the written explanation.
    assert "AUC 0.700" in page
    assert "effective robustness 1.100" in page
    assert re.search(r"R_ho: R² = (0\.9\d\d|1\.000); R_he: R² = -?0\.0", page)
    assert "Omitted" not in page  # every section had its input
    # The uncertainty table right after Table I; P(FSRF better) by counting seed pairs (test_analysis.py):
    # (4 + 8/9 + 8/9 + 5.5/9) / 7 = 0.913 over w/o DHF, 6/7 = 0.857 over late fusion.
    assert page.index('id="table1"') < page.index('id="uncertainty"') < page.index('id="curves"')
    table = page.split('id="table-uncertainty_Non0_F1_score"', 1)[1].split("</table>", 1)[0]
    assert "<th>P(FSRF better than variant) [95% CI]</th>" in table and "<td>-</td>" in table
    assert "P(FSRF better): w/o DHF 0.91 [" in page and "; Late fusion 0.86 [" in page
    assert "Avg. (missing)</b> is a seeds × 6 score matrix" in page


def _chromium() -> str:
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        proc = subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode or not Path("/usr/bin/chromium").exists():
            pytest.skip(f"chromium is not installed and apt could not install it: {proc.stderr.strip()[-200:]}")
        exe = "/usr/bin/chromium"
    return exe


def _browse(what: list[str], url: str, *, window=WINDOW) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        return subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}", "--virtual-time-budget=10000",
             *what, url], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


# Added to a copy of the page only to measure where the browser laid out the curves figure; it changes
# nothing visible, so the screenshot of the original page has the figure at the same place.
MEASURE = ("<script>var r=document.querySelector('#fig-curves img').getBoundingClientRect();"
           "document.body.setAttribute('data-curves',[r.left,r.top,r.width,r.height].join(','));</script></body>")


def test_report_renders_in_chromium(built):
    page = built / "report.html"
    probe_page = built / "measure.html"
    probe_page.write_text(page.read_text().replace("</body>", MEASURE))
    try:
        dom = _browse(["--dump-dom"], probe_page.as_uri())
    finally:
        probe_page.unlink()
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    curves = html.split('id="fig-curves"', 1)[1].split("</figure>", 1)[0]
    assert '<img alt="' in curves and 'src="data:image/png;base64,iVBORw0KGgo' in curves  # a PNG signature
    table1 = html.split('id="table-table1_Non0_F1_score"', 1)[1].split("</table>", 1)[0]
    assert "<sup>*</sup>" in table1 and "w/o DHF" in table1
    import mlflow
    versions = html.split('id="versions-table"', 1)[1].split("</table>", 1)[0]
    assert f"<td>{mlflow.__version__}</td>" in versions and "<td>polars</td>" in versions
    left, top, width, height = (float(x) for x in html.split('data-curves="', 1)[1].split('"', 1)[0].split(","))
    assert width > 300 and height > 150  # the image was decoded and laid out

    # Screenshot of the original page, the window tall enough to hold the figure; width as asked.
    window = (WINDOW[0], max(WINDOW[1], int(top + height) + 40))
    shot = built / "screenshot.png"
    proc = _browse([f"--screenshot={shot}"], page.as_uri(), window=window)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert img.shape[:2] == (window[1], window[0])
    assert img.var() > 0
    region = img[int(top): int(top + height), int(left): int(left + width)]
    assert (region.min(axis=2) < 200).mean() > 0.02  # ink: lines, bands, axes, text
    # FSRF's line colour (#1f77b4) is drawn in that region.
    fsrf = np.abs(region - np.array([31, 119, 180])).max(axis=2) < 30
    assert fsrf.sum() > 50


def test_report_from_parquet_omits_what_it_lacks(study, tmp_path):
    from analysis import report

    out = tmp_path / "from-parquet"
    assert report.main(["--runs-parquet", str(study["parquet"]), "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.count('class="note">Omitted') == 4  # probe, cost and configs need MLflow; no --study-dir
    assert 'id="fig-curves"' in page and (out / "figures" / "curves.svg").is_file()


def test_bad_input_is_one_line_and_exit_2(study, tmp_path):
    proc = report_cli("--robustness-run", "0" * 32, "--tracking-uri", study["uri"], "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert "0" * 32 in proc.stderr and "not found" in proc.stderr
    missing = tmp_path / "nope" / "runs.parquet"
    proc = report_cli("--runs-parquet", str(missing), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {missing}: no such file (expected a robustness " \
                                                            "study's runs.parquet)"
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".r.*"))


@pytest.fixture(scope="module")
def built_text(text_study, tmp_path_factory):
    """The report of the text-only study (real-MOSI-like transcripts: fsrf and ridge, unk and intra curves)."""
    from analysis import report

    out = tmp_path_factory.mktemp("reports") / "mosi-text"
    assert report.main(["--robustness-run", text_study["parent"], "--tracking-uri", text_study["uri"],
                        "--out", str(out), "--no-log"]) == 0
    return out


def _between(page: str, start: str, end: str = "</table>") -> str:
    return page.split(start, 1)[1].split(end, 1)[0]


def test_text_only_report_two_ways_ridge_and_references(built_text):
    page = (built_text / "report.html").read_text()
    # Two ways to lose a word, with both AUCs: zeroed 0.80 - 0.3 / 2, [UNK] 0.80 - 0.4 * 0.335.
    assert "Two ways to lose a word" in page
    assert f"{0.80 - UNK_CURVATURE * 0.335:.3f}" == "0.666"
    assert "FSRF: AUC 0.650 with zeroed states, 0.666 with [UNK] ids" in page
    assert "cache-friendly" in page and "[UNK]" in page
    assert "Ridge (frozen states): AUC 0.660 with zeroed states; no [UNK] curve" in page
    assert (built_text / "tables" / "curves_unk_Non0_F1_score.csv").is_file()
    assert (built_text / "figures" / "curves.png").stat().st_size > 1000
    # Ridge: a row of Table I, not of Table II; drawn as the simplest baseline.
    assert "Ridge (frozen states)" in _between(page, 'id="table-table1_Non0_F1_score"')
    table2 = _between(page, 'id="table-table2_Non0_F1_score"')
    assert "FSRF" in table2 and "Ridge" not in table2
    assert "simplest baseline" in page
    # The paper's {l} values on MOSI, labelled as not comparable; MOSEI's are not shown.
    refs = _between(page, 'id="paper-references"')
    assert "82.58" in refs and "81.20" in refs and "82.62" not in page and "80.76" not in page
    assert "80.00 ± 1.00" in refs  # this study's measured FSRF {l} beside them
    assert "paper values, different encoder (BERT-base fine-tuned) and protocol: not directly comparable" in page
    # One clear note on what does not apply to text-only data.
    note = _between(page, 'id="text-only-note"', "</p>")
    assert "not applicable" in note and "eq (1)" in note and "eq (2)" in note and "probe" in note
    assert "Inter-MM" in note
    # Uncertainty on the one condition {l}: every FSRF seed (0.79 .. 0.81) beats every ridge seed (0.75 .. 0.77).
    assert "P(FSRF better): Ridge (frozen states) 1.00 [1.00, 1.00]" in page
    assert "Avg. (missing)</b> is" not in page and (built_text / "tables" / "uncertainty_Non0_F1_score.tex").is_file()
    assert "not applicable to text-only data" in _between(page, 'id="probe"', "</section>")


def test_references_need_a_known_dataset(built):
    page = (built / "report.html").read_text()  # synthetic three-modality study: no paper marks, no note
    assert 'id="paper-references"' not in page and "82.58" not in page
    assert 'id="text-only-note"' not in page and "Two ways to lose a word" not in page
