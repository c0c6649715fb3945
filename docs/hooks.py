"""MkDocs hooks: pages written from the code and from saved results at build time, never kept by hand.

- reference/options.md: every option of `edit` and `tune` from the one option schema (editing.requests);
- reference/registries.md: every registry's entries with their help (editing.registries);
- benchmarks/shapes.md and its plots: from the result files the shapes benchmark saves
  (`python -m editing eval --shapes --out DIR` writes DIR/table.json; copied to benchmarks/results/);
- benchmarks/speed.md and its plot: from `python benchmarks/speed.py --json PATH` files in benchmarks/results/.

mkdocs.yml names this file under `hooks:`; tests/test_docs.py calls the page functions directly.
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # the docs build imports the library from this checkout
    sys.path.insert(0, str(ROOT))

OPTIONS_PAGE = "reference/options.md"
REGISTRIES_PAGE = "reference/registries.md"
SHAPES_PAGE = "benchmarks/shapes.md"
SPEED_PAGE = "benchmarks/speed.md"


def _cell(value) -> str:
    """A table cell: Markdown's pipes escaped, nothing empty."""
    text = str(value).replace("|", "\\|").replace("\n", " ").strip()
    return text if text else "-"


def _default(option) -> str:
    if option.required or option.needed:
        return "required"
    if option.resolve:
        return "decided per edit (see help)"
    value = option.default
    if value in ("", [], None):
        return "none" if option.none_as is None else f"{option.none_as!r} (none)"
    return f"`{value}`"


def _accepts(option) -> str:
    choices = option.choice_values() if option.choices is not None else None
    if choices is None and option.item is not None:
        from editing.requests import _item_choices

        choices = _item_choices(option)
    parts = []
    if option.range:
        parts.append(option.range)
    if choices:
        parts.append(", ".join(f"`{c}`" for c in choices))
    if option.kind in ("words", "switches"):
        parts.append("comma-separated")
    if option.repeat:
        parts.append("repeatable")
    return "; ".join(parts) or "-"


def _type_name(option) -> str:
    names = {str: "text", int: "integer", float: "number", bool: "switch"}
    return names.get(option.type, option.type.__name__) + (" or none" if option.nullable else "")


def option_reference() -> str:
    """The option reference page: every option of `edit` and `tune`, grouped as `--help` groups them."""
    from editing.requests import options

    try:
        from ui.edit_tab import api_fields

        api = set(api_fields())
    except ImportError:  # the app's packages missing: the API column says so
        api = None
    lines = [
        "# Option reference",
        "",
        "Generated from the one option schema (`editing/requests.py`, the config dataclasses' fields and their",
        "`metadata`) each time the site is built: an option added to a config appears here with no docs edit.",
        "The same schema makes `python -m editing edit --help`, the keys of eval and batch specs, and the app's",
        "`/edit` API parameters (the *API name*; `-` where the app keeps an option off its API).",
        "",
    ]
    for command, title in (("edit", "`python -m editing edit`"), ("tune", "`python -m editing tune`")):
        lines += [f"## {title}", ""]
        groups: dict[str, list] = {}
        for option in options(command):
            groups.setdefault(option.group or "general", []).append(option)
        for group, members in groups.items():
            lines += [f"### {group}", "", "| flag | API name | type | default | accepts | help |", "|---|---|---|---|---|---|"]
            for option in members:
                flag = f"`{option.flag}`" if option.flags else f"`{option.name}` (positional)"
                if len(option.flags) > 1:
                    flag += " (also " + ", ".join(f"`{f}`" for f in option.flags[1:]) + ")"
                name = f"`{option.name}`" if command == "edit" and (api is None or option.name in api) else "-"
                described = option.choice_help()
                text = option.help_text() + (
                    "<br>" + "<br>".join(f"`{k}`: {v}" for k, v in described.items()) if described else ""
                )
                cells = (flag, _cell(name), _type_name(option), _cell(_default(option)), _cell(_accepts(option)), _cell(text))
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def registries_page() -> str:
    """The registries page: every registered entry with its help, and the call that adds one."""
    from editing.registries import REGISTRIES

    lines = [
        "# Registered modes, samplers, presets, condition kinds, step caches, mask sources and styles",
        "",
        "Generated from the registries (`editing/registries.py` lists them) each time the site is built.",
        "Adding an entry is one call; [Extending](../extending.md) shows a worked example.",
        "",
    ]
    for registry in REGISTRIES:
        lines += [
            f"## {registry.title.capitalize()}",
            "",
            f"Picked with {registry.option}; added with `{registry.register}`.",
            "",
        ]
        lines += ["| name | what it is |", "|---|---|"]
        lines += [f"| `{name}` | {_cell(text)} |" for name, text in registry.described().items()]
        lines.append("")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- benchmark pages


def shapes_results(folder: Path = RESULTS) -> list[tuple[str, dict]]:
    """The shapes benchmark's saved runs (table.json documents), newest first, by file stem."""
    found = []
    for path in sorted(folder.glob("shapes-*.json"), reverse=True):
        found.append((path.stem, json.loads(path.read_text(encoding="utf-8"))))
    return found


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}"
    return str(value)


def _when(document: dict) -> str:
    """'Run on DATE at commit C' of a saved result."""
    return f"Run on {document.get('date', 'an unrecorded date')} at commit `{document.get('commit') or 'unknown'}`"


def _note(document: dict) -> str:
    """' (why the commit was filled in by hand)' of a saved result, or ''."""
    return f" ({document['commit_note']})" if document.get("commit_note") else ""


def _interval(summary: dict, key: str) -> str:
    interval = summary.get(key + "_interval")
    value = _fmt(summary.get(key))
    return value if not interval else f"{value} [{_fmt(interval[0])}, {_fmt(interval[1])}]"


def _pair_means(document: dict) -> dict[str, list[float]]:
    """Per setting, the mean true-motion warp error of each frame pair over its edits (rows carry `warp_errors`)."""
    import numpy as np

    sums: dict[str, list[list[float]]] = {}
    for row in document.get("rows", []):
        pairs = row.get("warp_errors")
        if pairs:
            sums.setdefault(row["setting"], []).append([np.nan if v is None else v for v in pairs])
    with warnings.catch_warnings():  # a pair no edit measured (nothing visible moved) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return {
            setting: [float(v) for v in np.nanmean(np.array(values, dtype=float), axis=0)] for setting, values in sums.items()
        }


def shapes_plots(document: dict) -> dict[str, bytes]:
    """PNG plots of one run: quality against cost per setting, warp error per frame pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = {k: v for k, v in document["summary"].items() if v.get("seconds_per_frame")}
    colour = {name: f"C{i}" for i, name in enumerate(document["summary"])}  # one colour per setting in both plots
    plots = {}
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, label in (
        (axes[0], "edit_accuracy", "edit accuracy (higher is better)"),
        (axes[1], "warp_error", "true-motion warp error (lower is better)"),
    ):
        for name, values in summary.items():
            axis.scatter(values["seconds_per_frame"], values[key], color=colour[name])
            axis.annotate(name, (values["seconds_per_frame"], values[key]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        axis.set_xlabel("seconds per frame")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    figure.suptitle("Quality against cost, per setting")
    figure.tight_layout()
    plots["quality-cost"] = _png(figure)
    plt.close(figure)
    pairs = _pair_means(document)
    if pairs:
        figure, axis = plt.subplots(figsize=(7, 4))
        for name, values in pairs.items():
            axis.plot(range(len(values)), values, marker="o", label=name, color=colour.get(name))
        axis.set_xticks(range(len(next(iter(pairs.values())))))
        axis.set_xticklabels([f"{t}-{t + 1}" for t in range(len(next(iter(pairs.values()))))])
        axis.set_xlabel("frame pair")
        axis.set_ylabel("true-motion warp error (8-bit levels)")
        axis.set_title("Warp error per frame pair (mean over clips and edits)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        plots["warp-pairs"] = _png(figure)
        plt.close(figure)
    return plots


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def shapes_page(results: list[tuple[str, dict]]) -> tuple[str, dict[str, bytes]]:
    """The shapes benchmark page (Markdown) and its images (name -> PNG), from the saved runs."""
    lines = [
        "# Shapes benchmark results",
        "",
        "Generated at build time from the result files in `benchmarks/results/` (the `table.json` that",
        "`python -m editing eval --shapes --out DIR` writes, copied there). Each run states its command, date and",
        "commit; what the columns mean is on [The shapes world and benchmark](../shapes.md).",
        "",
    ]
    images: dict[str, bytes] = {}
    if not results:
        lines += ["No saved run yet."]
    for stem, document in results:
        clips = document.get("clips", [])
        lines += [f"## {stem}", "", f"`{document.get('command', 'command not recorded')}`", ""]
        lines += [
            f"{_when(document)}: model `{document.get('model')}`, {len(clips)} clips, {document.get('steps')} steps, "
            f"{_fmt(document.get('minutes'))} minutes of edits{_note(document)}.",
            "",
            "| setting | edit acc | structure IoU | true-motion warp error | colour flicker | s / frame |",
            "|---|---|---|---|---|---|",
        ]
        for name, values in document["summary"].items():
            cells = [_interval(values, key) for key in ("edit_accuracy", "structure_iou", "warp_error", "flicker")]
            lines.append("| " + " | ".join([name, *cells, _fmt(values.get("seconds_per_frame"))]) + " |")
        lines += ["", "[low, high]: 95% bootstrap interval over clips. Seconds per frame compare only within one run.", ""]
        for name, data in shapes_plots(document).items():
            images[f"{stem}-{name}.png"] = data
            lines += [f"![{name} of {stem}]({stem}-{name}.png)", ""]
        notes = [n for n in document.get("notes", []) if not n.startswith("tuned:")]
        if notes:
            lines += ["Notes the run printed:", ""] + [f"- {_cell(n)}" for n in notes] + [""]
    return "\n".join(lines) + "\n", images


def speed_results(folder: Path = RESULTS) -> list[tuple[str, dict]]:
    """The speed benchmark's saved runs (benchmarks/speed.py --json), newest first, by file stem."""
    return [
        (path.stem, json.loads(path.read_text(encoding="utf-8"))) for path in sorted(folder.glob("speed-*.json"), reverse=True)
    ]


def speed_plot(document: dict) -> bytes:
    """Seconds and UNet evaluations per frame of each setting, as ratios of the first row (the base)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = document["rows"]
    base = rows[0]
    names = [row["setting"] for row in rows]
    figure, axis = plt.subplots(figsize=(8, 4))
    positions = range(len(rows))
    axis.bar(
        [p - 0.2 for p in positions], [row["s/frame"] / base["s/frame"] for row in rows], width=0.4, label="wall time per frame"
    )
    axis.bar(
        [p + 0.2 for p in positions],
        [row["UNet evals/frame"] / base["UNet evals/frame"] for row in rows],
        width=0.4,
        label="UNet evaluations per frame",
    )
    axis.set_xticks(list(positions))
    axis.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    axis.set_ylabel(f"ratio to {base['setting']}")
    axis.set_title("Cost per setting, same run")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    data = _png(figure)
    plt.close(figure)
    return data


def speed_page(results: list[tuple[str, dict]]) -> tuple[str, dict[str, bytes]]:
    """The speed results page (Markdown) and its plots, from the saved runs."""
    lines = [
        "# Speed results",
        "",
        "Generated at build time from the result files in `benchmarks/results/` that `python benchmarks/speed.py",
        "--json PATH` writes. Each run states its command, date and commit; ratios compare settings within one run.",
        "What the settings are: [Speed presets and LoRAs](../speed.md).",
        "",
    ]
    images: dict[str, bytes] = {}
    if not results:
        lines += ["No saved run yet."]
    for stem, document in results:
        lines += [f"## {stem}", "", f"`{document.get('command', 'command not recorded')}`", ""]
        lines += [
            f"{_when(document)}: `{document.get('model')}`, {document.get('dtype')} on {document.get('device')}, "
            f"{document.get('frames')} frames, {document.get('steps')} steps{_note(document)}.",
            "",
            "| setting | s / frame | UNet evals / frame | VAE share of time | keyframes |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['setting']} | {r['s/frame']:.3f} | {r['UNet evals/frame']:.2f} | {r['VAE share']:.0%} | {r['keyframes']} |"
            for r in document["rows"]
        ]
        images[f"{stem}-cost.png"] = speed_plot(document)
        lines += ["", f"![cost of {stem}]({stem}-cost.png)", ""]
    return "\n".join(lines) + "\n", images


# ---------------------------------------------------------------- mkdocs


def on_files(files, config):
    """Add the generated pages (and the benchmark plots) to the build."""
    from mkdocs.structure.files import File

    generated = {OPTIONS_PAGE: option_reference(), REGISTRIES_PAGE: registries_page()}
    for path, (page, images) in ((SHAPES_PAGE, shapes_page(shapes_results())), (SPEED_PAGE, speed_page(speed_results()))):
        generated[path] = page
        for name, data in images.items():
            generated[str(Path(path).parent / name)] = data
    for path, content in generated.items():
        old = files.get_file_from_path(path)
        if old is not None:
            files.remove(old)
        files.append(File.generated(config, path, content=content))
    return files
