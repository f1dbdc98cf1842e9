"""The workflow's story over time, drawn: the promotion metric of every version (promoted or rejected), the
drift share of every check against its threshold, the measured and estimated performance of every window,
and the decisions (retrainings with their trigger, promotions, rejections) as markers.

One figure (plotly, which Evidently brings) of three rows on one time axis:

    promotion metric   each version at its training time, on its holdout: ● promoted, ✕ rejected; the
                       served version's value as a step line
    drift              each check's share of drifted columns (● drifted), its threshold dashed
    performance        each window's measured metric on labelled predictions, its estimate before the
                       labels (CBPE), and the served version's holdout value it is compared with

and a dotted vertical line at each retraining, named by its version and trigger.

Where it is drawn: the monitoring job writes `<store>/<workflow>/reports/story.html` after each check
(`write_report`), and the local runner embeds the same figure in its status page (`embed`). Both pages are
static files: plotly.js is written once beside them from the installed plotly package
(`plotly-<version>.min.js`, nothing downloaded, by the page or at run time); the figure's data and layout
are in the page as JSON (`<script type="application/json" id="…-figure">`), for the browser and for
scripts alike.

What a version became is known to the planner, not to the store: the local runner gives it (its status's
history); the monitoring job infers it from the store (`read`): a version was promoted when it was served
(the version a check monitored, or a later version's champion) or its trigger promotes by itself (Initial,
SpecChange); any other was rejected. A version still being decided on shows as rejected until it is served.
OnlineLearning snapshots (`v1.12`) are left out: the versions they start from are drawn. At most
`MAX_CHECKS` checks, the newest, are read.
"""

from __future__ import annotations

import contextlib
import html
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mlworkflow.runtime.lease import write_atomically
from mlworkflow.runtime.store import WorkflowStore

MAX_CHECKS = 2000  # newest check folders drawn (a check every 15 minutes: three weeks)
SELF_PROMOTING_TRIGGERS = ("Initial", "SpecChange")  # promoted without a comparison (the planner's rule)
COLOURS = {"Promoted": "#2ca02c", "Rejected": "#d62728", "Failed": "#7f7f7f"}


@dataclass(frozen=True)
class VersionPoint:
    """A trained version: when its training finished, why it ran, its holdout value of the promotion metric
    (None: not scored, or failed), what became of it (Promoted, Rejected, Failed) and the champion's value
    on the same rows, which decided it."""

    version: str
    trained_at: datetime
    trigger: str
    value: float | None
    outcome: str
    reason: str = ""
    champion: str | None = None  # the served version it was compared with, and that one's value on the
    champion_value: float | None = None  # same holdout (None: not compared)


@dataclass(frozen=True)
class DriftPoint:
    """A drift check: when it ran, on which version's inputs, its share of drifted columns and threshold."""

    checked_at: datetime
    version: str
    share: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class PerformancePoint:
    """A performance check: the measured metric on labelled predictions (None: too few labels), its
    estimate on the window (None: no estimate) and the version's holdout value (its baseline)."""

    checked_at: datetime
    version: str
    measured: float | None
    estimated: float | None
    baseline: float | None


@dataclass(frozen=True)
class Story:
    metric: str
    versions: list[VersionPoint]
    drift: list[DriftPoint]
    performance: list[PerformancePoint]


def read(
    store: WorkflowStore,
    metric: str,
    served: str | None = None,
    outcomes: Mapping[str, tuple[str, str]] | None = None,
) -> Story:
    """The story in `store`: every version's model card and the newest MAX_CHECKS checks' results.

    `outcomes` (version -> (outcome, reason)), when the caller knows them, say what became of each version;
    a version it does not name (and every one without it) is inferred as the module says, `served` being
    the version served now. Unreadable cards and results are skipped."""
    drift: list[DriftPoint] = []
    performance: list[PerformancePoint] = []
    folders = sorted(store.monitoring.glob("*/"), reverse=True)[:MAX_CHECKS]
    for folder in reversed(folders):
        drift_result, performance_result = _json(folder / "result.json"), _json(folder / "performance.json")
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if drift_result and drift_result.get("share") is not None:
                drift.append(
                    DriftPoint(
                        _time(drift_result["checkedAt"]),
                        str(drift_result["version"]),
                        float(drift_result["share"]),
                        float(drift_result["threshold"]),
                        bool(drift_result["drifted"]),
                    )
                )
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if performance_result and performance_result.get("metric") == metric:
                performance.append(
                    PerformancePoint(
                        _time(performance_result["checkedAt"]),
                        str(performance_result["version"]),
                        _number(performance_result.get("measured")),
                        _number(performance_result.get("estimated")),
                        _number(performance_result.get("baseline")),
                    )
                )
    cards = []
    models = store.model_dir("v0").parent
    for folder in models.glob("*/") if models.exists() else []:
        card = _json(folder / "card.json") if "." not in folder.name else None
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if card:
                cards.append((card, _time(card["trainedAt"])))
    ever_served = {served} | {p.version for p in drift} | {p.version for p in performance}
    ever_served |= {str((card.get("champion") or {}).get("version")) for card, _ in cards}
    versions = []
    for card, trained_at in sorted(cards, key=lambda pair: pair[1]):
        version, trigger = str(card["version"]), str(card.get("trigger", ""))
        promoted = version in ever_served or trigger in SELF_PROMOTING_TRIGGERS
        outcome, reason = (outcomes or {}).get(version, ("Promoted" if promoted else "Rejected", ""))
        value = _number((card.get("metrics") or {}).get(metric))
        champion = card.get("champion") or {}
        versions.append(
            VersionPoint(
                version,
                trained_at,
                trigger,
                value,
                outcome,
                reason,
                champion.get("version"),
                _number((champion.get("metrics") or {}).get(metric)),
            )
        )
    return Story(metric, versions, drift, performance)


def _json(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def figure(story: Story) -> Any:
    """The story as a plotly Figure (three rows sharing the time axis; see the module's docstring)."""
    from plotly import graph_objects as go
    from plotly.subplots import make_subplots

    metric = story.metric
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.07,
        subplot_titles=(
            f"{metric} of every version on its holdout",
            "share of drifted columns per check",
            f"{metric} in production, per window",
        ),
    )
    scored = [v for v in story.versions if v.value is not None]
    for outcome, symbol in (("Promoted", "circle"), ("Rejected", "x")):
        chosen = [v for v in scored if v.outcome == outcome]
        fig.add_trace(
            go.Scatter(
                name=f"{outcome.lower()} version",
                x=[v.trained_at for v in chosen],
                y=[v.value for v in chosen],
                text=[v.version for v in chosen],
                customdata=[[v.trigger, v.reason] for v in chosen],
                mode="markers+text",
                textposition="middle right",
                cliponaxis=False,
                marker={"symbol": symbol, "size": 11, "color": COLOURS[outcome]},
                hovertemplate="%{text} (%{customdata[0]}): %{y:.4f}<br>%{customdata[1]}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    compared = [v for v in scored if v.champion_value is not None]
    fig.add_trace(
        go.Scatter(
            name="champion on the same rows",
            x=[v.trained_at for v in compared],
            y=[v.champion_value for v in compared],
            text=[f"{v.champion} on {v.version}'s holdout" for v in compared],
            mode="markers",
            marker={"symbol": "circle-open", "size": 11, "color": "#7f7f7f", "line": {"width": 2}},
            hovertemplate="%{text}: %{y:.4f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    times = [v.trained_at for v in story.versions] + [p.checked_at for p in story.drift]
    times += [p.checked_at for p in story.performance]
    start, end = (min(times), max(times)) if times else (None, None)
    promoted = [v for v in scored if v.outcome == "Promoted"]
    if promoted:
        # Served from its promotion until the next one; drawn to the last thing the story knows.
        fig.add_trace(
            go.Scatter(
                name="served version",
                x=[v.trained_at for v in promoted] + [end],
                y=[v.value for v in promoted] + [promoted[-1].value],
                mode="lines",
                line={"shape": "hv", "color": COLOURS["Promoted"], "width": 1},
                hoverinfo="skip",
            ),
            row=1,
            col=1,
        )
    drift = story.drift
    fig.add_trace(
        go.Scatter(
            name="drift share",
            x=[p.checked_at for p in drift],
            y=[p.share for p in drift],
            text=[p.version for p in drift],
            mode="lines+markers",
            marker={"color": ["#d62728" if p.drifted else "#1f77b4" for p in drift], "size": 8},
            line={"color": "#1f77b4"},
            hovertemplate="%{y:.0%} of columns drifted (%{text})<extra></extra>",
        ),
        row=2,
        col=1,
    )
    # Each check's threshold holds until the next check, over the whole story (visible with one check).
    fig.add_trace(
        go.Scatter(
            name="drift threshold",
            x=[start, *(p.checked_at for p in drift), end] if drift else [],
            y=[drift[0].threshold, *(p.threshold for p in drift), drift[-1].threshold] if drift else [],
            mode="lines",
            line={"dash": "dash", "color": "#d62728", "shape": "hv"},
            hovertemplate="threshold %{y:.0%}<extra></extra>",
        ),
        row=2,
        col=1,
    )
    performance = story.performance
    for name, values, style in (
        ("measured", [p.measured for p in performance], {"color": "#9467bd"}),
        ("estimated (CBPE)", [p.estimated for p in performance], {"color": "#ff7f0e", "dash": "dot"}),
    ):
        fig.add_trace(
            go.Scatter(
                name=name,
                x=[p.checked_at for p in performance],
                y=values,
                text=[p.version for p in performance],
                mode="lines+markers",
                line=style,
                marker={"size": 9},
                connectgaps=True,
                hovertemplate=f"{name} %{{y:.4f}} (%{{text}})<extra></extra>",
            ),
            row=3,
            col=1,
        )
    # The served version's holdout value, from each check to the next (and to the story's end).
    fig.add_trace(
        go.Scatter(
            name="holdout baseline",
            x=[*(p.checked_at for p in performance), end] if performance else [],
            y=[*(p.baseline for p in performance), performance[-1].baseline] if performance else [],
            text=[*(p.version for p in performance), performance[-1].version] if performance else [],
            mode="lines",
            line={"color": "#7f7f7f", "dash": "dash", "shape": "hv"},
            hovertemplate="%{text} on its holdout %{y:.4f}<extra></extra>",
        ),
        row=3,
        col=1,
    )
    for v in story.versions:
        if v.trigger == "Initial":  # the start of the story, not a decision to retrain
            continue
        fig.add_vline(x=v.trained_at, line={"dash": "dot", "color": COLOURS.get(v.outcome), "width": 1})
        fig.add_annotation(
            x=v.trained_at,
            y=0.02,
            yref="y domain",
            xanchor="left",
            yanchor="bottom",
            text=f" {v.version} · {v.trigger}",
            showarrow=False,
            font={"size": 11, "color": COLOURS.get(v.outcome)},
        )
    fig.update_yaxes(title_text=metric, row=1, col=1)
    fig.update_yaxes(title_text="share", range=[0, 1.05], tickformat=".0%", row=2, col=1)
    fig.update_yaxes(title_text=metric, row=3, col=1)
    fig.update_layout(
        height=760,
        margin={"t": 70, "l": 60, "r": 20, "b": 40},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.06},
        hovermode="closest",
    )
    return fig


def plotly_js(folder: Path) -> str:
    """plotly.js written once into `folder` from the installed plotly package (never downloaded); returns
    its file name, for a `<script src>` beside it."""
    import plotly
    from plotly.offline import get_plotlyjs

    name = f"plotly-{plotly.__version__}.min.js"
    if not (folder / name).exists():
        write_atomically(folder / name, get_plotlyjs())
    return name


def embed(story: Story, element: str = "story") -> str:
    """The figure as HTML to put in a page that loads plotly.js (`plotly_js`): a div, the figure as JSON,
    and the call that draws it."""
    data = figure(story).to_json().replace("</", "<\\/")  # JSON inside a script element
    return f"""<div id="{element}"></div>
<script type="application/json" id="{element}-figure">{data}</script>
<script>(function () {{
  const figure = JSON.parse(document.getElementById("{element}-figure").textContent);
  Plotly.newPlot("{element}", figure.data, figure.layout, {{responsive: true, displaylogo: false}});
}})();</script>"""


EXPLAINED = (
    "Top: each version's promotion metric on its own held-out rows, and the champion's on the same rows "
    "(the comparison that decided it). Middle: each drift check. Bottom: the served version on labelled "
    "predictions (measured) and before the labels (estimated), against its holdout value. Dotted lines: "
    "retrainings, with their trigger."
)


def page(title: str, story: Story, script: str) -> str:
    """A whole page of the story, loading plotly.js from `script` (a path relative to the page)."""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<script src="{html.escape(script)}"></script>
<style>body{{font-family:sans-serif;margin:1em 2em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{EXPLAINED}</p>
{embed(story)}
</body></html>
"""


def write_report(store: WorkflowStore, metric: str, served: str) -> Path:
    """`<store>/<workflow>/reports/story.html` (with plotly.js beside it) from what the store holds, while
    `served` is served; returns its path."""
    folder = store.reports
    script = plotly_js(folder)
    path = folder / "story.html"
    title = f"{store.workflow}: the story so far"
    write_atomically(path, page(title, read(store, metric, served), script))  # a browser sees no half
    return path
