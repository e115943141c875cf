"""The published numbers, made from the committed results files.

    python -m helpers.tools.published           # rewrite every generated block of README.md and docs/
    python -m helpers.tools.published --check   # exit 1, naming each block, when one is stale

``results/<NAME>/`` holds a run's ``results.json`` (numbers only: no image, mask, checkpoint or
per-image row), or an ablation's own ``ablation-*.json`` and ``.md``, and ``command.txt``, the command
that made it. README.md and the pages of docs/
show those numbers only inside generated blocks::

    <!-- published: NAME TABLE -->
    ...
    <!-- /published -->

TABLE is one of :data:`TABLES`; the tables of :data:`ACROSS` compare runs, named ``NAME,NAME,...``.
A hand-edited or stale number in a block fails ``--check`` (and the test that runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .. import paths
from ..io import write_text

RESULTS = paths.ROOT / "results"
BLOCK = re.compile(r"(<!-- published: (\S+) (\S+) -->\n)(.*?)(<!-- /published -->)", re.S)
LABELS = {"model1_frozen": "Model 1, frozen encoder", "model2_finetuned": "Model 2, fine-tuned",
          "model3_unet": "Model 3, U-Net decoder"}
SHORT = {"Model 1 (frozen encoder)": "Model 1", "Model 2 (fine-tuned encoder)": "Model 2",
         "Model 3 (fine-tuned, U-Net decoder)": "Model 3"}
REPORT_DICE = {"model1_frozen": "0.752", "model2_finetuned": "0.862"}


def load(name: str, root: Path = RESULTS) -> dict:
    """The run's results.json, or the ablation's ablation-*.json when the folder holds one."""
    path = root / name / "results.json"
    tables = sorted((root / name).glob("ablation-*.json"))
    if not path.exists() and len(tables) == 1:
        path = tables[0]
    try:
        return json.loads(path.read_text())
    except OSError:
        raise SystemExit(f"error: {path}: missing (a block names the run {name!r})") from None


def _ms(v: dict | None, digits: int = 3) -> str:
    if not v:
        return "-"
    if len(v["per_seed"]) == 1:
        return f"{v['mean']:.{digits}f}"
    return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}"


def scorecard(res: dict) -> str:
    lines = ["| row | claim | the report | this run | verdict | why |", "| --- | --- | --- | --- | --- | --- |"]
    for r in res["scorecard"]:
        cells = [r["id"], r["claim"], r["report"], r["this_run"] or "-", r["verdict"] or "not measured", r["why"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def models(res: dict) -> str:
    lines = ["| model | seeds | Dice, working size | Jaccard, original size | Dice, original size | Jaccard, TTA "
             "| the report: Dice |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in res["models"].items():
        lines.append(f"| {LABELS.get(name, name)} | {', '.join(map(str, m['seeds']))} | {_ms(m['macro']['dice'])} "
                     f"| {_ms(m['original']['jaccard'])} | {_ms(m['original']['dice'])} "
                     f"| {_ms((m.get('original_tta') or {}).get('jaccard'))} | {REPORT_DICE.get(name, '-')} |")
    return "\n".join(lines)


def seeds(res: dict) -> str:
    first = next(iter(res["models"].values()))["seeds"]
    per = " / ".join(map(str, first))
    lines = ["| model | " + " | ".join(f"seed {s}" for s in first) + f" | mean ± sd | with TTA (seeds {per}) "
             f"| Dice, working size (seeds {per}) |", "| --- " * (len(first) + 4) + "|"]

    def each(v):
        return " / ".join(f"{x:.4f}" for x in v["per_seed"]) if v else "-"
    for name, m in res["models"].items():
        j = m["original"]["jaccard"]
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(f"{x:.4f}" for x in j["per_seed"])
                     + f" | {_ms(j)} | {each((m.get('original_tta') or {}).get('jaccard'))} "
                     f"| {each(m['macro']['dice'])} |")
    return "\n".join(lines)


def _comparison(r: dict) -> str:
    text = r["comparison"]
    for long, short in SHORT.items():
        text = text.replace(long, short)
    return text


def paired(res: dict) -> str:
    lines = ["| comparison | seed | Jaccard difference | 95% interval | better on | holds across seeds |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {_comparison(r)} | {r['seed']} | {r['mean_difference']:+.3f} | {r['ci_low']:+.3f} to "
              f"{r['ci_high']:+.3f} | {r['b_better']} of {r['n_images']} | {r['holds across seeds']} |"
              for r in res["paired_original_jaccard_by_seed"]]
    return "\n".join(lines)


def paired_mean(res: dict) -> str:
    lines = ["| comparison | Jaccard difference | 95% interval | images where the second model is better |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {_comparison(r)} | {r['mean_difference']:+.3f} | {r['ci_low']:+.3f} to {r['ci_high']:+.3f} "
              f"| {r['b_better']} of {r['n_images']} |" for r in res["paired_original_jaccard"]]
    return "\n".join(lines)


def conditions(res: dict) -> str:
    first = next(iter(res["models"].values()))
    env = res.get("environment", {})
    return (f"Data: {res['data_source']}; scored split: {res['scored_split']}; encoder weights: "
            f"{res['encoder_weights_used']}; seeds {', '.join(map(str, first['seeds']))}; "
            f"{res['settings'].get('EPOCHS')} epochs at {res['settings'].get('IMAGE_SIZE')}x"
            f"{res['settings'].get('IMAGE_SIZE')}; device {res['device']}"
            + (f"; torch {env['torch']}" if env.get("torch") else "") + ".")


def _recipe_text(r: dict) -> str:
    return (f"{r['epochs']} epochs at lr {r['lr']:g}, {r['image_size']} px, "
            f"{'augmentation' if r['augment'] else 'no augmentation'}, {r['loss']}, {r['schedule']} schedule, "
            f"encoder BatchNorm {r['encoder_bn']}, deep supervision {r['deep_supervision']:g}")


def recipes(runs: list[dict]) -> str:
    """Model 3 in each run: its named recipe, its cost in trainings and TTA passes, and its validation
    Jaccard at the original size seed by seed, with the run's TTA and as one ensemble."""
    from ..evaluate import TTA_VIEWS  # imported here: the other tables need no torch

    lines = ["| recipe | settings | cost | Jaccard, seed by seed | mean ± sd | with TTA: mean ± sd "
             "| the seeds as one ensemble | ensemble with TTA |", "| --- " * 8 + "|"]
    for res in runs:
        m, mode = res["models"]["model3_unet"], res["settings"].get("TTA")
        r, j, ens = m["recipe"], m["original"]["jaccard"], m.get("ensemble") or {}
        tta = (m.get("original_tta") or {}).get("jaccard")
        cells = [f"`{r['preset']}`", _recipe_text(r),
                 f"{len(m['seeds'])} trainings of {r['epochs']} epochs"
                 + (f"; TTA: {len(TTA_VIEWS[mode])} passes an image" if mode else ""),
                 " / ".join(f"{x:.4f}" for x in j["per_seed"]) + f" (seeds {', '.join(map(str, m['seeds']))})",
                 _ms(j, 4), f"{mode}: {_ms(tta, 4)}" if tta else "-",
                 f"{ens['original']['jaccard']:.4f}" if ens else "-",
                 f"{ens['original_tta']['jaccard']:.4f} ({mode})" if ens.get("original_tta") else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timings(res: dict) -> str:
    """The run's wall time per notebook, as results.json recorded it."""
    t = res["notebook_seconds"]
    total = sum(t.values())
    return ("| " + " | ".join(n.split("_")[0] for n in t) + " | all |\n" + "| --- " * (len(t) + 1) + "|\n| "
            + " | ".join(f"{v:.0f} s" for v in t.values()) + f" | {total:.0f} s ({total / 3600:.1f} h) |")


def ablation(res: dict) -> str:
    """The ablation's own table, as it wrote it into its .md beside the .json."""
    from .ablation import epoch_rows, markdown  # imported here: the other tables need no torch

    return markdown(res["rows"], res["header"], epoch_rows(res["runs"])).strip()


TABLES = {"scorecard": scorecard, "models": models, "seeds": seeds, "paired": paired, "paired_mean": paired_mean,
          "conditions": conditions, "timings": timings, "recipes": recipes, "ablation": ablation}
ACROSS = ("recipes",)  # tables that take a list of runs


def render(text: str, root: Path = RESULTS) -> str:
    """``text`` with every generated block made anew from the results files."""
    def block(m):
        name, table = m.group(2), m.group(3)
        if table not in TABLES:
            raise SystemExit(f"error: a block asks for the table {table!r}; there are {', '.join(TABLES)}")
        made = [load(n, root) for n in name.split(",")]
        if len(made) > 1 and table not in ACROSS:
            raise SystemExit(f"error: the table {table!r} takes one run, and the block names {name!r}")
        return f"{m.group(1)}{TABLES[table](made if table in ACROSS else made[0])}\n{m.group(5)}"
    return BLOCK.sub(block, text)


def pages(base: Path = paths.ROOT) -> list[Path]:
    return [base / "README.md", *sorted((base / "docs").glob("*.md"))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.tools.published", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is stale")
    args = p.parse_args(argv)
    stale = []
    for page in pages():
        text = page.read_text()
        new = render(text)
        if new != text:
            stale.append(page)
            if not args.check:
                write_text(page, new)
    for page in stale:
        print(f"{page.relative_to(paths.ROOT)}: {'stale' if args.check else 'rewritten'} from results/")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
