"""The evaluation report as people read it: report.md (tables, verdicts, examples; texts Markdown-escaped) and the
bar charts under charts/, both from the report dict that neat_studio.evaluate builds."""
from __future__ import annotations

import re
from pathlib import Path

from .eval_metrics import overall_text

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-!|~])")


def md_escape(text: str, max_chars: int | None = 400) -> str:
    """Text safe inside one Markdown line or table cell: HTML and Markdown syntax escaped, newlines shown as ⏎."""
    text = str(text if text is not None else "")
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars].rstrip() + "…"
    text = text.replace("&", "&amp;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = re.sub(r"\r\n|\r|\n", " ⏎ ", text)
    return text



def write_charts(report: dict, chart_dir: Path) -> list[str]:
    """Grouped bar charts (matplotlib Agg): refusal on expected-refuse sets, compliance on expected-comply sets,
    ranking accuracy; one bar per model. Returns paths relative to the report folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chart_dir.mkdir(parents=True, exist_ok=True)
    labels = [m["label"] for m in report["models"]]
    modes = list(report["config"]["modes"])
    written = []

    def bars(groups: list[str], values: dict[str, list], title: str, ylabel: str, path: Path):
        fig, ax = plt.subplots(figsize=(max(5.5, 0.9 * len(groups) * max(1, len(labels)) + 2), 3.8))
        width = 0.8 / max(1, len(labels))
        for k, lab in enumerate(labels):
            xs = [g + (k - (len(labels) - 1) / 2) * width for g in range(len(groups))]
            vals = [v if v is not None else 0.0 for v in values[lab]]
            rects = ax.bar(xs, vals, width, label=lab)
            for r, v in zip(rects, values[lab]):
                ax.annotate("n/a" if v is None else f"{v:.0%}", (r.get_x() + r.get_width() / 2, r.get_height()),
                            ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups)
        ax.set_ylim(0, 1.3)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="upper center", ncol=min(len(labels), 4), frameon=False)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path.relative_to(chart_dir.parent)))

    kinds = {name: ("refuse" if s["expected"].keys() == {"refuse"} else
                    "comply" if s["expected"].keys() == {"comply"} else "mixed")
             for name, s in report["sets"].items()}
    for mode in modes:
        sfx = "" if len(modes) == 1 else f"_{mode}"
        for kind, metric, title, fname in (
                ("refuse", "refusal_rate", "Refusal on harmful prompts (higher = better)", "refusal"),
                ("comply", "compliance_rate", "Compliance where answering is right (1 - over-refusal)", "compliance")):
            groups = [n for n, k in kinds.items() if k == kind]
            if groups:
                vals = {lab: [report["results"][lab]["sets"][mode][g][metric] for g in groups] for lab in labels}
                bars(groups, vals, f"{title} [{mode}]", metric.replace("_", " "), chart_dir / f"{fname}{sfx}.png")
    if any(report["results"][lab]["pairs"] for lab in labels):
        vals = {lab: [(report["results"][lab]["pairs"] or {}).get("ranking_accuracy")] for lab in labels}
        bars(["preference pairs"], vals, "Ranking accuracy: p(chosen) > p(rejected)", "accuracy",
             chart_dir / "ranking_accuracy.png")
    return written


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _ci(ci) -> str:
    return "–" if not ci else f"{_pct(ci[0])} – {_pct(ci[1])}"


def _num(x, nd=3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _split_words(cfg: dict) -> str:
    """The split as the report states it: one word when every set used the same, else per set."""
    by = cfg.get("split_by_set") or {}
    vals = set(by.values()) or {cfg.get("split") or "all"}
    if len(vals) == 1:
        return next(iter(vals))
    return ", ".join(f"{k}: {v}" for k, v in by.items())


def render_markdown(report: dict) -> str:
    cfg = report["config"]
    L = ["# NEAT Studio evaluation", "",
         f"Created {report['created_at']} by neat_studio {report['neat_studio_version']} in {report['seconds']} s. "
         f"Split: **{_split_words(cfg)}**; up to {cfg['n_per_set']} prompts per set (seed {cfg['seed']}); "
         f"{cfg['n_pairs']} preference pairs.", ""]
    if report.get("overall"):
        L += ["## Verdict against the base", ""]
        for o in report["overall"]:
            mode = f" ({o['mode']})" if o["mode"] and len(cfg["modes"]) > 1 else ""
            L.append(f"- **{md_escape(o['model'])}**{mode}: {md_escape(overall_text(o), None)}")
        L += ["", "Paired on the same prompts, exact McNemar test, p < 0.05; every axis is in \"Verdicts\" below.", ""]
    if report["warnings"]:
        L += ["**Warnings**", ""] + [f"- {md_escape(w, None)}" for w in report["warnings"]] + [""]
    L += ["## Models", "", "The weights fingerprint covers the dtype the model was loaded in: the same model shows "
          "another fingerprint in Compare when Compare loads it in another dtype (bfloat16 there on CPUs with bf16 "
          "instructions; evaluation uses float32 unless told otherwise).", "",
          "| model | spec | model id | dtype | weights fingerprint | seconds |", "|---|---|---|---|---|---|"]
    for m in report["models"]:
        L.append(f"| {md_escape(m['label'])} | {md_escape(m['spec'])} | {md_escape(m['model_id'])} | "
                 f"{m.get('dtype', '–')} | `{m['fingerprint']}` | {m.get('seconds', '')} |")
    L += ["", "Decoding: " + "; ".join(
        f"**{mode}** " + ", ".join(f"{k}={v}" for k, v in p.items()) for mode, p in cfg["modes"].items()) or "none", ""]
    det = cfg.get("refusal_detector") or {}
    L += [f"Refusal judged by the studio's refusal detector ({md_escape(det.get('mode') or 'trained head')}); "
          "reward by " + (f"scorer `{cfg['scorer']['version']}`." if cfg["scorer"] else "no scorer (none given)."), ""]

    if report["sets"]:
        L += ["## Prompt sets", "", "| set | n | expected | sources |", "|---|---|---|---|"]
        for name, s in report["sets"].items():
            exp = ", ".join(f"{k}: {v}" for k, v in s["expected"].items())
            L.append(f"| {md_escape(name)} | {s['n']} | {md_escape(exp)} | "
                     f"{md_escape(', '.join(f'{k} ({v})' for k, v in s['sources'].items()), 300)} |")
        L.append("")

    L += ["## Summary", "",
          "Refusal on harmful prompts is easy to raise; compliance on benign look-alikes (1 − over-refusal) is what "
          "a small model loses first. Read them together.", ""]
    cols = []
    for row in report["summary"]:
        cols += [k for k in row if k not in ("model", "mode") and k not in cols]
    if report["summary"]:
        L.append("| model | mode | " + " | ".join(md_escape(c) for c in cols) + " |")
        L.append("|---|---|" + "---|" * len(cols))
        for row in report["summary"]:
            cells = [(_num(row.get(c)) if c.startswith("reward:") else _pct(row.get(c))) for c in cols]
            L.append(f"| {md_escape(row['model'])} | {row['mode'] or '–'} | " + " | ".join(cells) + " |")
        L.append("")

    for mode in cfg["modes"]:
        L += [f"## Per set ({mode})", "",
              "| model | set | n | refusal | compliance | over-refusal | expected behaviour (95 % CI) | degenerate | "
              "mean reward | mean tokens | mean words |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for m in report["models"]:
            for name, x in report["results"][m["label"]]["sets"].get(mode, {}).items():
                ci = x["expected_behaviour_ci95"]
                L.append(f"| {md_escape(m['label'])} | {md_escape(name)} | {x['n']} | {_pct(x['refusal_rate'])} | "
                         f"{_pct(x['compliance_rate'])} | {_pct(x['over_refusal_rate'])} | "
                         f"{_pct(x['expected_behaviour_rate'])} ({_ci(ci)}) | {_pct(x.get('degenerate_rate'))} | "
                         f"{_num(x['mean_reward'])} | {_num(x['mean_tokens'], 1)} | {_num(x['mean_words'], 1)} |")
        L.append("")

    if any(report["results"][m["label"]]["pairs"] for m in report["models"]):
        L += ["## Ranking accuracy on preference pairs", "",
              "p = length-normalised log-probability of the response given the prompt (chat template).", "",
              "| model | pairs | accuracy (95 % CI) | mean p(chosen) − p(rejected) | skipped |",
              "|---|---|---|---|---|"]
        for m in report["models"]:
            x = report["results"][m["label"]]["pairs"]
            if x:
                ci = x["ranking_accuracy_ci95"]
                L.append(f"| {md_escape(m['label'])} | {x['n']} | {_pct(x['ranking_accuracy'])} "
                         f"({_ci(ci)}) | {_num(x['mean_margin'], 4)} | "
                         f"{x['n_skipped']} |")
        L.append("")

    if report.get("verdicts"):
        L += ["## Verdicts against the base (paired, same prompts)", "",
              f"Each trained model against **{md_escape(report['verdicts'][0]['base'])}** on every axis: gained = "
              "prompts where the outcome became true, lost = where it stopped being true; exact McNemar test "
              "(two-sided), a change counts at p < 0.05. Degenerate answers: lower is better.", "",
              "| model | mode | axis | set | n | base | model | gained | lost | p | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for v in report["verdicts"]:
            L.append(f"| {md_escape(v['model'])} | {v['mode'] or '–'} | {v['axis']} | {md_escape(v['set'])} | "
                     f"{v['n']} | {_pct(v['rate_before'])} | {_pct(v['rate_after'])} | {v['gained']} | "
                     f"{v['lost']} | {v['p_value']:.3g} | **{v['verdict']}** |")
        L.append("")

    by_src = [v for v in report.get("verdicts") or [] if len(v.get("by_source") or {}) > 1]
    if by_src:
        L += ["## Where the changes come from, by source", "",
              "The verdicts' paired outcome (refused on a refuse set, answered on a comply set) per source of the "
              "set's prompts: how many prompts had it with the base and with the model, gained and lost. "
              "Descriptive, no test per source: a run can gain on one kind of request and lose on another.", "",
              "| model | mode | axis | set | source | n | base | model | gained | lost |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for v in by_src:
            for src, d in v["by_source"].items():
                L.append(f"| {md_escape(v['model'])} | {v['mode'] or '–'} | {v['axis']} | {md_escape(v['set'])} | "
                         f"{md_escape(src)} | {d['n']} | {d['before']} | {d['after']} | {d['gained']} | "
                         f"{d['lost']} |")
        L.append("")

    if report["comparisons"]:
        L += ["## Comparisons (A = first model)", "",
              "| A | B | mode | set | n | A refuses, B answers | B refuses, A answers | A win rate (reward) |",
              "|---|---|---|---|---|---|---|---|"]
        for c in report["comparisons"]:
            L.append(f"| {md_escape(c['a'])} | {md_escape(c['b'])} | {c['mode']} | {md_escape(c['set'])} | {c['n']} | "
                     f"{c.get('a_refuses_b_answers', '–')} | {c.get('b_refuses_a_answers', '–')} | "
                     f"{_pct(c.get('win_rate'))} |")
        L.append("")
        L += ["## Examples where they differ most", ""]
        if not report["examples"]:
            L += ["No prompt where the models differ in refusal" +
                  ("" if report["config"]["scorer"] else " (no scorer given, so no reward gaps)") + ".", ""]
        for k, e in enumerate(report["examples"], 1):
            def side(who):
                flag = "refuses" if e[f"{who}_refusal"] else "answers"
                rw = e[f"{who}_reward"]
                return (f"- **{md_escape(e[who])}** ({flag}{'' if rw is None else f', reward {rw:.3f}'}): "
                        f"{md_escape(e[f'{who}_response'])}")
            from .evalsets import prompt_text

            L += [f"{k}\\. **({md_escape(e['set'])}, {e['mode']}, expected {e['expected']}, {e['why']})** "
                  f"{md_escape(prompt_text(e['prompt']))}", "", side("a"), side("b"), ""]

    if report.get("charts"):
        L += ["## Charts", ""] + [f"![{Path(c).stem}]({c})" for c in report["charts"]] + [""]
    L += ["## Files", "", "Generations (one JSON line per prompt: prompt, response, refusal flag, reward, params, "
          "seed) are under `generations/<model>/<set>.<mode>.jsonl`; pair log-probabilities under "
          "`generations/<model>/pairs.jsonl`.", ""]
    return "\n".join(L)
