"""`lancy runs` and `lancy report`: three runs of the demo at different learning rates and one failed run, listed,
shown, compared (the best marked, only the learning rate as a difference), drawn as HTML pages opened in headless
Chromium (every plot drawn, no request made) and cleaned (the failed one only)."""

import json
import os
import re
import shutil

import pytest

from tests.browser import render
from tests.conftest import lancy, sft

RATES = ("1e-3", "3e-3", "1e-2")


@pytest.fixture(scope="module")
def folder(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs-cli") / "runs"
    quick = ["--model", tiny_model, "--max-steps", 4, "--max-examples", 32, "--eval-steps", 4, "--output-dir", out]
    for rate in RATES:
        assert sft(*quick, "--learning-rate", rate, "--run-name", f"lr{rate}").exit_code == 0
        assert lancy("eval", "--model", out / f"lr{rate}", "--limit", 8, "--method", "score").exit_code == 0
    from lancy_trl.train.trainer import LancySFTTrainer

    def boom(self, *args, **kwargs):
        raise RuntimeError("boom")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LancySFTTrainer, "training_step", boom)
        failed = sft(*quick, "--run-name", "broken")
    assert failed.exit_code != 0
    return out


def test_list_shows_every_run_with_its_status_and_filters(folder):
    listed = lancy("runs", "list", "--output-dir", folder, "--json")
    rows = {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line) for line in listed.stdout.splitlines()}
    assert {name: r["status"] for name, r in rows.items()} == {"lr1e-3": "complete", "lr3e-3": "complete",
                                                               "lr1e-2": "complete", "broken": "failed"}
    assert rows["lr1e-3"]["metric"][0] == "accuracy (score)" and rows["lr1e-3"]["steps"] == 4
    table = lancy("runs", "list", "--output-dir", folder, env={"COLUMNS": "80"})
    assert table.exit_code == 0 and all(len(line) <= 80 for line in table.output.splitlines()), table.output
    assert "4 runs in" in table.output and "failed" in table.output
    only = lancy("runs", "list", "--output-dir", folder, "--status", "failed", "--json")
    assert [json.loads(line)["status"] for line in only.stdout.splitlines()] == ["failed"]


def test_compare_marks_the_best_and_shows_only_the_learning_rate_as_a_difference(folder):
    runs = [folder / f"lr{rate}" for rate in RATES]
    result = lancy("runs", "compare", *runs, "--json")
    report = json.loads(result.stdout)
    assert report["differences"] == {"learning_rate": [1e-3, 3e-3, 1e-2]}
    losses = {run: f["train_loss"] for run, f in report["figures"].items()}
    assert report["best"]["train_loss"] == [min(losses, key=losses.get)]
    assert "eval score accuracy" in report["figures"][str(runs[0])]
    shown = lancy("runs", "compare", *runs, env={"COLUMNS": "80"})
    assert shown.exit_code == 0 and "settings that differ" in shown.output and "*" in shown.output
    assert "learning_rate" in shown.output and "lora_r" not in shown.output


def test_show_reads_one_run_and_mistakes_are_one_line(folder, tmp_path):
    shown = lancy("runs", "show", folder / "lr1e-3")
    assert shown.exit_code == 0 and "lancy sft" in shown.output and "learning_rate: 0.001" in shown.output
    broken = lancy("runs", "show", folder / "broken")
    assert "failed" in broken.output and "boom" in broken.output
    for args in (["show", tmp_path], ["compare", folder / "lr1e-3"]):
        result = lancy("runs", *args)
        assert result.exit_code == 1 and result.output.startswith("error:") and "Traceback" not in result.output


def own_requests(seen, page):
    return [url for url in seen.requests if url != page.resolve().as_uri()]


def test_report_pages_open_offline_with_every_plot_drawn(folder, tmp_path):
    runs = [folder / f"lr{rate}" for rate in RATES]
    assert lancy("report", runs[0]).exit_code == 0
    compared = lancy("report", *runs, folder / "broken", "--output", tmp_path / "compare.html")
    assert compared.exit_code == 0, compared.output
    for page, least in ((runs[0] / "report.html", 4), (tmp_path / "compare.html", 14)):
        html = page.read_text()
        assert "<script" not in html and not re.search(r'(src|href)="(?!#)|url\((?!#)|@import', html)
        seen = render(page, tmp_path / "browser")
        assert own_requests(seen, page) == []
        assert len(seen.figures) >= least, seen.figures
        assert all(f["width"] > 100 and f["height"] > 100 and f["data"] and f["drawn"] == f["data"]
                   for f in seen.figures), seen.figures
        from PIL import Image

        colours = Image.open(seen.png).convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours and len(colours) > 50  # plots and text drawn, not a blank page
        if os.environ.get("LANCY_TEST_ARTIFACTS"):  # the README's screenshot is made the same way
            shutil.copy(seen.png, os.environ["LANCY_TEST_ARTIFACTS"])
    page = (tmp_path / "compare.html").read_text()
    assert "confusion (score)" in page and "boom" in page
    differ = page.split("Settings that differ")[1].split("</table>")[0]
    assert re.findall(r"<tr><td>(\w+)</td>", differ) == ["learning_rate"]
    assert 'class="n best"' in page


def test_the_browser_check_sees_a_request_and_an_empty_plot(tmp_path):
    """The control: a page that loads a remote image, and a figure that draws nothing, are both caught."""
    page = tmp_path / "probe.html"
    page.write_text('<html><body><img src="http://lancy-probe.invalid/x.png"><figure><svg width="200" height="200">'
                    '<g class="plot-data"></g></svg></figure></body></html>')
    seen = render(page, tmp_path / "browser")
    assert own_requests(seen, page) == ["http://lancy-probe.invalid/x.png"]
    assert seen.figures == [{"width": 200, "height": 200, "data": 1, "drawn": 0}]


def test_report_mistakes_are_one_line(folder, tmp_path):
    for args in ([tmp_path], [folder / "lr1e-3", "--output", tmp_path / "missing" / "r.html"],
                 [folder / "lr1e-3", folder / "lr1e-3"], [folder / "lr1e-3", "--output", tmp_path]):
        result = lancy("report", *args)
        assert result.exit_code == 1 and result.output.startswith("error:") and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "missing").exists()


def test_clean_names_the_failed_run_first_and_deletes_only_it(folder):
    dry = lancy("runs", "clean", "--output-dir", folder, "--dry-run")
    assert dry.exit_code == 0 and "would delete" in dry.output and "broken" in dry.output and "lr1e-3" not in dry.output
    assert (folder / "broken").is_dir()
    asked = lancy("runs", "clean", "--output-dir", folder)  # no terminal to ask on: refused, nothing deleted
    assert asked.exit_code == 1 and "pass --yes" in asked.output and (folder / "broken").is_dir()
    done = lancy("runs", "clean", "--output-dir", folder, "--yes")
    assert done.exit_code == 0 and "deleted 1 runs" in done.output
    assert not (folder / "broken").exists() and all((folder / f"lr{rate}").is_dir() for rate in RATES)
