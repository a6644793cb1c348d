"""analysis/report.py end to end on the known store of test_analysis.py: files, MLflow artifacts, the
rendered page in headless Chromium (DOM and a screenshot), and one-line errors with exit code 2; and a
variant added to ``fsrf.variants`` alone reaching every table, figure and the page."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import MappingProxyType

import numpy as np
import polars as pl
import pytest

from analysis import load, robustness, tables
from conftest import ROOT, subprocess_env
from fsrf import variants
from test_analysis import F1, SEEDS, VARIANTS, ZEROED_CURVATURE, run_values
from test_analysis import study, text_study  # noqa: F401  (the session-scoped stores)

WINDOW = (1400, 900)


def report_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "analysis" / "report.py"), *args], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=180)


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
    # every section had its input but the yardsticks: the hand-made store has no base config (no ceiling)
    # and no shuffled floors
    assert page.count("Omitted") == 3, re.findall(r"Omitted: [^<]*", page)
    assert "Omitted: no run has shuffled floors" in page and "Omitted: no runs at constant training rates" in page
    assert "Omitted: no ceiling: the parent run has no base.* params" in page
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


RULE_TEXT = (
    "<b>noise branch (R_n)</b>: degenerate when noise_var &lt; 0.001 (R_n collapsed to a constant: the noise "
    "priors then only move a bias), else working.",
    "<b>shared space (R_ho)</b>: working when ho_agreement &gt; 0.05 (a sample&#x27;s modalities agree more "
    "than different samples do), else degenerate.",
    "<b>specific vs shared (R_he)</b>: degenerate when he_ho_cos &gt; 0.9 (R_he duplicates R_ho), else working.",
    "<b>DAS alignment</b>: working when das_paired_mass &gt;= 2 (the plan gives a sample&#x27;s own other view at "
    "least twice a uniform plan&#x27;s mass) and das_pair_cost_ratio &lt; 1 (a sample&#x27;s two views are "
    "closer than two samples are); else degenerate.",
    "<b>loss terms</b>: a loss term whose mean grad share is &lt; 0.01 is listed as inert (it barely moves the "
    "shared layers).",
)


def test_mechanism_health_section(built):
    """The fixture's known health (test_analysis.HEALTH): table cells by hand, the rules written on the page,
    one verdict line per variant, the grad-share figure and the CSVs."""
    page = (built / "report.html").read_text()
    assert page.index('id="table2"') < page.index('<section id="health">') < page.index('<section id="overlap">')
    section = _between(page, '<section id="health">', "</section>")
    rows = {}
    for tr in _between(section, 'id="health-table"').split("<tr>")[2:]:
        cells = re.findall(r"<td>(.*?)</td>", tr)
        rows[cells[0]] = cells[1:]
    head = re.findall(r"<th>(.*?)</th>", _between(section, 'id="health-table"', "</thead>"))
    col = {name: i - 1 for i, name in enumerate(head)}
    assert list(rows) == ["FSRF", "w/o DHF", "Late fusion"]
    fsrf, no_dhf, late = rows["FSRF"], rows["w/o DHF"], rows["Late fusion"]
    # FSRF noise_var (0.8, 0.9, 1.3): mean 1.0, std sqrt(0.14 / 2) = 0.2646; ho_agreement (0.3, 0.4, 0.8):
    # mean 0.5, std sqrt((0.04 + 0.01 + 0.09) / 2) = 0.2646; js share (0.01, 0.005, 0): 0.005 +- 0.005
    assert fsrf[col["n"]] == "3" and fsrf[col["noise_var"]] == "1.00 ± 0.265"
    assert fsrf[col["ho_agreement"]] == "0.500 ± 0.265" and fsrf[col["he_ho_cos"]] == "0.300 ± 0.265"
    assert fsrf[col["noise_rank"]] == "1.50 ± 0.500" and fsrf[col["das_pair_cost_ratio"]] == "0.667 ± 0.208"
    assert fsrf[col["grad_share/js"]] == "0.00500 ± 0.00500" and fsrf[col["grad_share/task"]] == "0.700 ± 0.100"
    # w/o DHF paired mass (1.5, 2.0, 2.1): mean 1.8667, std sqrt((0.1344 + 0.0178 + 0.0544) / 2) = 0.3215
    assert no_dhf[col["das_paired_mass"]] == "1.87 ± 0.321" and no_dhf[col["noise_var"]] == ""
    assert late[col["grad_share/task"]] == "1.00 ± 0.00" and late[col["das_paired_mass"]] == "1.10 ± 0.100"
    assert "noise_var/l" not in head  # per modality: the CSV only
    for rule in RULE_TEXT:
        assert f"<li>{rule}</li>" in section
    verdicts = {v: _between(section, f'<li id="health-{v}">', "</li>") for v in ("fsrf", "no_dhf", "late_fusion")}
    assert ("noise branch (R_n): <b>working</b> (mean noise_var 1.00) [3 of 3 runs working]; "
            "shared space (R_ho): <b>working</b> (mean ho_agreement 0.500) [3 of 3 runs working]; ") in verdicts["fsrf"]
    assert "loss terms: <b>inert</b> js (share 0.00500)" in verdicts["fsrf"]
    assert ("noise branch (R_n): <b>not applicable</b> (switched off by the variant: model.dhf=False)"
            in verdicts["no_dhf"])
    assert ("DAS alignment: <b>degenerate</b> (mean das_paired_mass 1.87, mean das_pair_cost_ratio 0.947) "
            "[2 of 3 runs working]; loss terms: none inert") in verdicts["no_dhf"]
    assert verdicts["late_fusion"].count("<b>not applicable</b>") == 4 and "working" not in verdicts["late_fusion"]
    for ext in ("png", "svg"):
        assert (built / "figures" / f"health_grad_shares.{ext}").stat().st_size > 1000
    summary = pl.read_csv(built / "tables" / "health_summary.csv")
    row = summary.filter((pl.col("variant") == "fsrf") & (pl.col("metric") == "noise_var/l")).row(0, named=True)
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.9) and row["std"] == pytest.approx(np.std([0.7, 0.8, 1.2], ddof=1))
    verdict_csv = pl.read_csv(built / "tables" / "health_verdicts.csv")
    assert verdict_csv.height == 3 * 4 and verdict_csv.filter(pl.col("verdict") == "working").height == 4


def test_report_from_parquet_omits_what_it_lacks(study, tmp_path):
    from analysis import report

    out = tmp_path / "from-parquet"
    assert report.main(["--runs-parquet", str(study["parquet"]), "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.count('class="note">Omitted') == 7  # probe, cost, configs, ceiling need MLflow; no --study-dir; no floors; no grid
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
    """The report of the text-only study (real-MOSI-like transcripts: fsrf and ridge, intra and zeroed curves)."""
    from analysis import report

    out = tmp_path_factory.mktemp("reports") / "mosi-text"
    assert report.main(["--robustness-run", text_study["parent"], "--tracking-uri", text_study["uri"],
                        "--out", str(out), "--no-log"]) == 0
    return out


def _between(page: str, start: str, end: str = "</table>") -> str:
    return page.split(start, 1)[1].split(end, 1)[0]


def test_text_only_report_two_ways_ridge_and_references(built_text):
    page = (built_text / "report.html").read_text()
    # Two ways to lose a word, with both AUCs: [UNK] (intra) 0.80 - 0.3 / 2, zeroed 0.80 - 0.4 * 0.335.
    assert "Two ways to lose a word" in page
    assert f"{0.80 - ZEROED_CURVATURE * 0.335:.3f}" == "0.666"
    assert "FSRF: AUC 0.650 with [UNK] ids, 0.666 with zeroed states" in page
    assert "still carry the dropped words" in page and "[UNK]" in page
    assert "Ridge (frozen states): AUC 0.660 with [UNK] ids; no zeroed-state curve" in page
    assert (built_text / "tables" / "curves_zeroed_Non0_F1_score.csv").is_file()
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
    # An old store, without health/* metrics: the section says so instead of failing.
    assert "Omitted: no run carries health/* metrics" in _between(page, '<section id="health">', "</section>")


def test_references_need_a_known_dataset(built):
    page = (built / "report.html").read_text()  # synthetic three-modality study: no paper marks, no note
    assert 'id="paper-references"' not in page and "82.58" not in page
    assert 'id="text-only-note"' not in page and "Two ways to lose a word" not in page


# -- adding a variant -----------------------------------------------------------------------------------
# SPEC's promise for fsrf/variants.py: a new variant is one entry in VARIANTS and nothing in analysis/.
# Each case adds one entry (an ablation placed before the baselines, whose colour comes from the palette;
# a baseline placed last with its own colour and line style) and checks that the tables, figures and report
# order, label, colour and describe it. The last test plants the copies this replaced (a label dict in
# tables.py, a colour rule in figures.py that knows the old variants by position) and sees the checks fail.

NEW_ABLATION = variants.Variant("no_mrm", "w/o MRM", "w/o MRM (trained on complete data only, DHF and DAS kept)",
                                {"missing.schedule": "constant", "missing.p0": 0.0, "missing.p1": 0.0})
NEW_BASELINE = variants.Variant("mean_pred", "Mean predictor", "Mean predictor (the training labels' mean: the floor)",
                                baseline=True, default=False, color="#17becf", linestyle="-.")
# Where each lands in the report's order among the fixture's variants (fsrf, no_dhf, late_fusion).
NEW_CASES = {"no_mrm": (NEW_ABLATION, "late_fusion", ["fsrf", "no_dhf", "no_mrm", "late_fusion"]),
             "mean_pred": (NEW_BASELINE, None, ["fsrf", "no_dhf", "late_fusion", "mean_pred"])}


def add_variant(monkeypatch, new: variants.Variant, *, before: str | None) -> None:
    """``new`` as one more entry of ``fsrf.variants.VARIANTS`` (before ``before``, else last), with the
    module's tables that are derived from VARIANTS derived again (as fsrf/variants.py derives them)."""
    entries = list(variants.VARIANTS)
    entries.insert(variants.NAMES.index(before) if before else len(entries), new)
    by_name = MappingProxyType({v.name: v for v in entries})
    monkeypatch.setattr(variants, "VARIANTS", tuple(entries))
    monkeypatch.setattr(variants, "BY_NAME", by_name)
    monkeypatch.setattr(variants, "NAMES", tuple(by_name))
    monkeypatch.setattr(variants, "DEFAULT", tuple(v.name for v in entries if v.default))
    monkeypatch.setattr(variants, "BASELINES", tuple(v.name for v in entries if v.baseline))


def runs_with(new: str, tmp_path) -> pl.DataFrame:
    """The fixture study's runs (no overlap sweep) plus three seeds of ``new`` scoring 0.02 below w/o DHF,
    read back through ``runs.parquet`` as the report reads them."""
    rows = [{"run_id": f"{v}-{s}", "variant": v, "seed": s, "overlap": None,
             **{k: x - (0.02 if v == new else 0.0) for k, x in run_values("no_dhf" if v == new else v, s).items()}}
            for v in (*VARIANTS, new) for s in SEEDS]
    path = tmp_path / "runs.parquet"
    pl.DataFrame(rows, schema_overrides={"overlap": pl.Float64}).write_parquet(path)
    return load.runs_from_parquet(path)


def check_tables(new: variants.Variant, order: list[str], main) -> None:
    """Table I lists ``new`` in its place under its label; Table II holds it only when it is an ablation."""
    t1 = tables.table1(main)
    assert t1["variant"].unique(maintain_order=True).to_list() == order
    md = tables.to_markdown(t1)
    assert [line.split(" | ")[0].removeprefix("| ") for line in md.splitlines()[2:]] == [
        tables.variant_name(v) for v in order]
    assert f"| {new.label} | 3 |" in md
    t2 = tables.table2(main)
    assert (new.name in t2["variant"].to_list()) == (not new.baseline)
    shown = tables.uncertainty_display(tables.uncertainty_table(main, reps=50))
    assert shown["Variant"].to_list() == [tables.variant_name(v) for v in order]


def check_figures(new: variants.Variant, order: list[str], main) -> None:
    """The curves and the Table I bars draw ``new`` in its place, under its label, in its own colour (its
    entry's ``color`` when it has one) and line style, the same in both figures."""
    from matplotlib.colors import to_hex
    from matplotlib.container import BarContainer

    from analysis import figures

    mine = figures.color(new.name)
    assert mine == (new.color or mine) and mine not in {figures.color(v) for v in order if v != new.name}
    fig = figures.curves_figure(robustness.curves(main), metric=F1)
    lines = [ln for ln in fig.axes[0].get_lines() if (ln.get_gid() or "").startswith("curve:")]
    assert [ln.get_gid().split(":")[1] for ln in lines] == order
    line = next(ln for ln in lines if ln.get_gid() == f"curve:{new.name}:[UNK] ids")
    assert to_hex(line.get_color()) == mine and line.get_linestyle() == new.linestyle
    assert line.get_label() == f"{new.label} (n=3)"
    bars = [c for c in figures.table1_figure(tables.table1(main)).axes[0].containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == [tables.variant_name(v) for v in order]
    assert {to_hex(p.get_facecolor()) for p in bars[order.index(new.name)].patches} == {mine}


def check_report(new: variants.Variant, order: list[str], page: str) -> None:
    """The page describes ``new`` among the variants in order, labels it in Table I and places it in Table II
    (an ablation, described there) or among the baselines that Table II leaves out."""
    intro = page.split("Variants: ", 1)[1].split(". The headline metric", 1)[0]
    assert intro == "; ".join(variants.description(v) for v in order)
    table1 = page.split('id="table-table1_Non0_F1_score"', 1)[1].split("</table>", 1)[0]
    assert [row.split("</th>", 1)[0] for row in table1.split("<tr><th>")[2:]] == [
        html.escape(tables.variant_name(v)) for v in order]
    section2 = page.split('<section id="table2">', 1)[1].split("</section>", 1)[0]
    in_table2 = f"<th>{html.escape(new.label)}</th>" in section2
    if new.baseline:
        assert not in_table2 and html.escape(new.label) + ", are not ablations" in section2
    else:
        assert in_table2 and f"FSRF against its ablations (w/o DHF (no homo/heterogeneous factorisation); " \
                             f"{new.description})" in section2


@pytest.mark.parametrize("name", list(NEW_CASES))
def test_a_new_variant_is_one_entry_in_fsrf_variants(name, monkeypatch, tmp_path):
    from analysis.sections import Inputs, write_report

    new, before, order = NEW_CASES[name]
    add_variant(monkeypatch, new, before=before)
    runs = runs_with(new.name, tmp_path)
    main = load.main_runs(runs)
    check_tables(new, order, main)
    check_figures(new, order, main)
    write_report(Inputs(runs=runs, source=str(tmp_path / "runs.parquet")), tmp_path / "report")
    check_report(new, order, (tmp_path / "report" / "report.html").read_text())


OLD_LABELS = {"fsrf": "FSRF", "no_dhf": "w/o DHF", "no_das": "w/o DAS", "no_noise": "w/o noise",
              "late_fusion": "Late fusion", "ridge": "Ridge (frozen states)"}


def old_color(variant: str) -> str:
    """figures.color as it was: the first five variants by position, ridge by name, others by characters."""
    from analysis import figures

    old = ("fsrf", "no_dhf", "no_das", "no_noise", "late_fusion")
    if variant == "ridge":
        return "#4d4d4d"
    return figures._COLORS[old.index(variant) if variant in old else 5 + sum(map(ord, variant)) % 3]


def test_the_checks_catch_a_private_copy_of_the_variants(monkeypatch, tmp_path):
    from analysis import figures

    new, before, order = NEW_CASES["mean_pred"]
    add_variant(monkeypatch, new, before=before)
    main = load.main_runs(runs_with(new.name, tmp_path))
    check_tables(new, order, main)
    check_figures(new, order, main)
    with monkeypatch.context() as planted:  # tables.py with its own label dict
        planted.setattr(tables, "variant_name", lambda v: OLD_LABELS.get(v, v))
        with pytest.raises(AssertionError):
            check_tables(new, order, main)
    with monkeypatch.context() as planted:  # figures.py colouring the variants it knew
        planted.setattr(figures, "color", old_color)
        with pytest.raises(AssertionError):
            check_figures(new, order, main)
    with monkeypatch.context() as planted:  # tables.py leaving out the baselines it knew
        planted.setattr(variants, "BASELINES", ("late_fusion", "ridge"))
        with pytest.raises(AssertionError):
            check_tables(new, order, main)
