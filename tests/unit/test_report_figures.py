"""The report's plain-JSON figures: plotly.py's property names, subplots, bucket widths."""

from __future__ import annotations

from bankde.monitoring.report import Fig, _bucket_seconds, subplots


def test_magic_underscores_expand_like_plotly_py() -> None:
    fig = Fig()
    fig.add_bar(x=[1], y=[2], marker_color="#123456", name="a")
    fig.update_layout(title={"text": "t"}, legend={"y": 1.0})
    fig.update_layout(legend={"x": 0.5})
    fig.update_xaxes(title_text="hour (UTC)", dtick=2)
    assert fig.data == [
        {"type": "bar", "x": [1], "y": [2], "marker": {"color": "#123456"}, "name": "a"}
    ]
    assert fig.layout["legend"] == {"y": 1.0, "x": 0.5}
    assert fig.layout["xaxis"] == {"title": {"text": "hour (UTC)"}, "dtick": 2}


def test_subplots_side_by_side() -> None:
    fig = subplots(["cards", "accounts", "customers"])
    assert fig.layout["xaxis"]["domain"][0] == 0
    assert abs(fig.layout["xaxis3"]["domain"][1] - 1) < 1e-9
    assert fig.layout["yaxis2"]["anchor"] == "x2"
    fig.update_xaxes(title_text="day")
    assert all(fig.layout[f"xaxis{s}"]["title"] == {"text": "day"} for s in ("", "2", "3"))
    assert [a["text"] for a in fig.layout["annotations"]] == ["cards", "accounts", "customers"]


def test_rate_buckets_widen_with_the_span() -> None:
    assert _bucket_seconds(60) == 1
    assert _bucket_seconds(3 * 3600) == 5
    assert _bucket_seconds(30 * 86400) == 900
