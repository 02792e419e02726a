"""The results as markdown tables (``results.md``): scores per language, size and
speed, out of domain, and calibration."""

from typing import Any, Dict, List


def markdown(results: Dict[str, Any]) -> str:
    """The results as markdown tables.

    results (Dict[str, Any]): As written to results.json.
    RETURNS (str): Markdown.
    """
    langs = results["langs"]
    lines = ["## Macro-F (accuracy) on the test split, per language", ""]
    lines.append("| system | " + " | ".join(langs) + " | mean |")
    lines.append("|---|" + "---:|" * (len(langs) + 1))
    for name, r in results["systems"].items():
        cells = [f"{r['per_lang'][lg]['macro_f']:.1f} ({r['per_lang'][lg]['acc']:.1f})" for lg in langs]
        cells.append(f"**{r['mean']['macro_f']:.1f}** ({r['mean']['acc']:.1f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Size and speed (same process, same test texts)", ""]
    lines.append("| system | size (MB) | tokens/s (batch) | docs/s (batch) | tokens/s (one doc) | docs/s (one doc) |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for name, r in results["systems"].items():
        s = r["speed"]
        lines.append(
            f"| {name} | {r['size_bytes'] / 1e6:.2f} | {s['batch']['tokens_per_s']:,.0f} | {s['batch']['docs_per_s']:,.1f} | "
            f"{s['single']['tokens_per_s']:,.0f} | {s['single']['docs_per_s']:,.1f} |"
        )
    if results.get("student_vs_teacher"):
        c = results["student_vs_teacher"]
        lines += [
            "",
            f"Student vs teacher: mean macro-F {c['macro_f_diff']:+.1f} points; "
            f"{c['speed_ratio_batch']:.1f}x tokens/s (batch), {c['speed_ratio_single']:.1f}x (one doc); "
            f"size {100 * c['size_fraction']:.1f} % of the teacher.",
        ]
    lines += ood_markdown(results)
    lines += calibration_markdown(results)
    env = results["environment"]
    lines += ["", f"Measured on {env['cpu_count']} CPU(s) ({env['machine']}), Python {env['python']}, spaCy {env['spacy']}; "
              f"speed on {results['n_speed_docs']} test docs, the systems' timing passes interleaved in {env['settings'].get('rounds', 1)} rounds."]
    return "\n".join(lines) + "\n"


def ood_markdown(results: Dict[str, Any]) -> List[str]:
    """The out-of-domain table of results.md (reported, never used to choose).

    results (Dict[str, Any]): As written to results.json.
    RETURNS (List[str]): Markdown lines.
    """
    sets = results.get("ood") or {}
    if not sets:
        return []
    names = list(results["systems"])
    lines = ["", "## Out of domain (not Amazon; reported only, never used to choose)", "",
             "| system | " + " | ".join(f"{k} ({v['lang']}, {v['n_docs']})" for k, v in sets.items()) + " | mean |",
             "|---|" + "---:|" * (len(sets) + 1)]
    for name in names:
        scores = [sets[k]["systems"][name]["macro_f"] for k in sets]
        lines.append(f"| {name} | " + " | ".join(f"{x:.1f}" for x in scores) + f" | **{sum(scores) / len(scores):.1f}** |")
    return lines


def calibration_markdown(results: Dict[str, Any]) -> List[str]:
    """The calibration table of results.md.

    results (Dict[str, Any]): As written to results.json.
    RETURNS (List[str]): Markdown lines.
    """
    info = results["calibration"]
    fit = (
        f"a temperature fitted on {info['n_dev_docs']} dev docs ({info['dev']})"
        if info["dev"] else "not measured: no dev docs (--dev) to fit a temperature on"
    )
    lines = ["", f"## Calibration on the test split: ECE (%, {info['n_bins']} bins), before and after temperature scaling", "",
             f"Temperature scaling: {fit}; it changes no decision. Reliability diagrams: reliability.png.", ""]
    lines.append("| system | ECE | temperature | ECE after | dev NLL before → after |")
    lines.append("|---|---:|---:|---:|---:|")
    hard = []
    for name, r in results["systems"].items():
        c = r["calibration"]
        if c.get("ece_before") is None:
            lines.append(f"| {name} | n/a | n/a | n/a | {c['reason']} |")
            continue
        if c["hard_labels"]:
            hard.append(name)
        if c["measured"]:
            temp = "n/a¹" if c["hard_labels"] else f"{c['temperature']:.3f}"
            cells = [f"{c['ece_before']:.1f}", temp, f"{c['ece_after']:.1f}", f"{c['dev_nll_before']:.3f} → {c['dev_nll_after']:.3f}"]
        else:
            cells = [f"{c['ece_before']:.1f}", "n/a", "n/a", "n/a"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if hard:
        lines += ["", f"¹ {', '.join(hard)}: 0/1 outputs, so confidence is always 100 % and ECE = 100 − accuracy; "
                  "scaling can only give every doc one confidence (the dev accuracy), and the fitted temperature "
                  "only reflects the clipping of probabilities to [1e-7, 1 − 1e-7]."]
    return lines


__all__ = ["calibration_markdown", "markdown", "ood_markdown"]
