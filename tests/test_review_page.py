"""The monthly review page, rendered by headless Chromium: what a person opening the file would see."""

from __future__ import annotations

import asyncio
import html
import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from spend_seed import (  # noqa: F401 (fixtures)
    EU,
    MONITOR,
    NOVEMBER_BY_BUDGET,
    NOVEMBER_USD,
    OPUS,
    RESEARCH,
    SUPPORT,
    fleet,
    fleet_authority,
    fleet_dsn,
    fleet_template,
    november_by_day,
)
from test_cli_reports import cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian: apt-get install -y chromium); the review page is checked in it",
)
BAR_BLUE = (0x3B, 0x6F, 0xD8)

# Appended to a copy of the page: reports the layout the browser computed and the visible text.
MEASURE = """
<script>
const out = {text: document.body.innerText, charts: {}};
for (const svg of document.querySelectorAll('svg.chart')) {
  const box = svg.getBoundingClientRect();
  out.charts[svg.id] = {
    size: [box.width, box.height],
    bars: [...svg.querySelectorAll('rect.bar')].map(r => {
      const b = r.getBoundingClientRect();
      return {label: r.querySelector('title').textContent, width: b.width, height: b.height};
    }),
    labels: [...svg.querySelectorAll('text.label')].map(t => t.textContent),
  };
}
const pre = document.createElement('pre');
pre.id = 'measured';
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>
"""


async def chromium(*args: str, profile: Path) -> str:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    return out.decode()


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG, such as Chromium writes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                corner = previous[i - channels] if i >= channels else 0
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, channels, rows


def count_color(width: int, channels: int, rows: list[bytes], rgb: tuple[int, int, int]) -> int:
    wanted = bytes(rgb)
    return sum(1 for row in rows for x in range(width) if row[x * channels : x * channels + 3] == wanted)


@pytest.fixture
async def review_page(fleet_authority, tmp_path) -> Path:
    page = tmp_path / "review.html"
    run = await cli(
        "report", "--review", "2026-11", "--html", str(page), "--currency", "USD",
        target=f"127.0.0.1:{fleet_authority.port}",
    )  # fmt: skip
    assert run.code == 0, run.err
    assert run.out.strip() == f"wrote {page}: 3 agents, {NOVEMBER_USD} USD in 2026-11"
    return page


async def test_the_review_page_is_one_self_contained_file(review_page):
    text = review_page.read_text("utf-8")
    assert "<script" not in text and "<link" not in text and "src=" not in text and "@import" not in text
    assert re.findall(r"https?://[^\s\"'<>]+", text) == ["http://www.w3.org/2000/svg"] * text.count("<svg ")
    assert text.count('<svg class="chart') == 5


@needs_chromium
async def test_the_review_page_shows_its_agents_totals_and_charts(review_page, tmp_path):
    measured = tmp_path / "measured.html"
    measured.write_text(review_page.read_text("utf-8").replace("</body>", MEASURE + "</body>"), "utf-8")
    dom = await chromium("--dump-dom", measured.as_uri(), profile=tmp_path / "profile")
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    seen = json.loads(html.unescape(found.group(1)))
    text = seen["text"]

    assert "Spend review 2026-11" in text
    assert f"{NOVEMBER_USD} USD\ntotal spend" in text
    for agent, spent in NOVEMBER_BY_BUDGET.items():
        assert agent in text and f"{spent} USD" in text
    assert EU not in text  # a EUR budget is not in a USD review
    assert "28.60 USD of 600.00 USD" in text  # the research agent against its limit
    assert OPUS in text and "22.25 USD (64.3%)" in text
    assert "research" in text and "22.65 USD (65.5%)" in text
    assert "3.775 USD × 6 tasks" in text  # cost per task of research: 22.65 / 6
    assert "16\ntasks" in text

    charts = seen["charts"]
    assert set(charts) == {"chart-agents", "chart-models", "chart-task-types", "chart-daily", "chart-per-task"}
    for name, chart in charts.items():
        assert chart["size"][0] > 0 and chart["size"][1] > 0, name
    agents = charts["chart-agents"]
    assert agents["labels"] == [RESEARCH, SUPPORT, MONITOR]
    widths = [b["width"] for b in agents["bars"]]
    assert widths[0] > widths[1] > widths[2] > 0 and all(b["height"] > 0 for b in agents["bars"])
    assert len(charts["chart-models"]["bars"]) == 4 and len(charts["chart-task-types"]["bars"]) == 7
    assert all(
        b["width"] > 0 and b["height"] > 0 for c in ("chart-models", "chart-task-types") for b in charts[c]["bars"]
    )
    days = charts["chart-daily"]["bars"]
    assert len(days) == 30  # every day of November, spent on or not
    spent_on = {day for day, cost in november_by_day().items() if cost > 0}
    for bar in days:
        day = bar["label"].split(":")[0]
        assert (bar["height"] > 0) == (day in spent_on), bar
        assert bar["width"] > 0
    tallest = max(days, key=lambda b: b["height"])
    assert tallest["label"].startswith("2026-11-23:")  # 6.00 USD, the most expensive day
    assert len(charts["chart-per-task"]["bars"]) == 7


@needs_chromium
async def test_the_review_page_paints_its_bars(review_page, tmp_path):
    shot = tmp_path / "review.png"
    await chromium(
        "--window-size=1000,1400", "--hide-scrollbars", f"--screenshot={shot}", review_page.as_uri(),
        profile=tmp_path / "profile",
    )  # fmt: skip
    width, channels, rows = png_pixels(shot.read_bytes())
    assert width == 1000 and len(rows) == 1400
    blue = count_color(width, channels, rows, BAR_BLUE)
    assert blue > 20_000, blue  # the agent, model and task-type bars, at least
    white = count_color(width, channels, rows, (255, 255, 255))
    assert white < width * len(rows)  # not a blank page


def test_a_large_fleet_shows_its_biggest_agents_and_sums_the_rest():
    from datetime import UTC, datetime
    from decimal import Decimal

    from agentbudget_server import review

    agents = [review.Agent(f"ns/agent-{i:03d}", Decimal(200 - i), Decimal(150), 1, 1) for i in range(130)]
    page = review.render(
        review.Review(
            month="2026-11", time_zone="UTC", currency="USD", namespace="", start=datetime(2026, 11, 1, tzinfo=UTC),
            end=datetime(2026, 12, 1, tzinfo=UTC), total=sum(a.spent for a in agents), entries=130, tasks=130,
            agents=agents, models=[], task_types=[], days=[review.Line("2026-11-01", Decimal(0))],
        )
    )  # fmt: skip
    chart = page[page.index('id="chart-agents"') : page.index("</svg>", page.index('id="chart-agents"'))]
    assert chart.count('<rect class="bar') == review.CHART_ROWS
    assert chart.count('class="bar over"') == review.CHART_ROWS  # 200 ... 176 spent of 150
    rest = sum(a.spent for a in agents[review.TABLE_ROWS :])
    assert f"and 30 more agents, {rest:.2f} USD together" in page
    assert "(the 25 biggest of 130)" in page
    assert '<div class="n">50</div><div class="t">agents over their limit</div>' in page
