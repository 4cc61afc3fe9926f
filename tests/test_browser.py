"""The report email and the overview page as a real browser renders them (Debian's headless chromium).

Skipped, saying why, where no chromium is installed; `.ci/run` installs it.
Set SHAKERS_CHROMIUM to use another binary, SHAKERS_SCREENSHOTS=DIR to keep the screenshots.
"""
from __future__ import annotations

import email
import email.policy
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from night import AS_OF
from report_nights import PAULA, busy_night

from processor.run import run_night

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    if os.environ.get("SHAKERS_CHROMIUM"):
        return shutil.which(os.environ["SHAKERS_CHROMIUM"]) or None
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


BROWSER = find_browser()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless browser found (install Debian's chromium: "
                                                        "apt-get install -y chromium; .ci/run does it)")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
           f"--user-data-dir={profile}", *args]
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done


def dump_dom(tmp_path: Path, page: Path) -> str:
    return chromium(tmp_path, "--dump-dom", page.as_uri()).stdout


def screenshot(tmp_path: Path, page: Path, name: str, size: str) -> bytes:
    shot = tmp_path / name
    chromium(tmp_path, f"--screenshot={shot}", f"--window-size={size}", page.as_uri())
    data = shot.read_bytes()
    keep = os.environ.get("SHAKERS_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / name).write_bytes(data)
    return data


# ---------------------------------------------------------------- PNG, without Pillow


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit truecolour PNG, such as chromium's screenshots."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour, _c, _f, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unexpected PNG format {header}"
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def colours(data: bytes, step: int = 4) -> set[tuple[int, ...]]:
    width, height, rows = png_pixels(data)
    bpp = len(rows[0]) // width
    seen = set()
    for row in rows[::step]:
        for x in range(0, width, step):
            seen.add(tuple(row[x * bpp:x * bpp + 3]))
    return seen


# ---------------------------------------------------------------- the pages


@pytest.fixture(scope="module")
def night_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    saved = os.environ.pop("SHAKERS_SMTP_HOST", None)
    try:
        export = busy_night().write(tmp / "export")
        result = run_night(export, policies_path=ROOT / "policies.yaml", out_dir=tmp / "run",
                           ledger_path=tmp / "ledger.sqlite",
                           workers=0, as_of=AS_OF)
    finally:
        if saved is not None:
            os.environ["SHAKERS_SMTP_HOST"] = saved
    for path in (result.out_dir / "outbox").glob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if msg["To"].addresses[0].addr_spec == PAULA:
            (tmp / "paula.html").write_text(msg.get_body(("html",)).get_content(), encoding="utf-8")
    return result, tmp


def test_the_browser_builds_the_report_email_with_its_projects_and_figures(night_run, tmp_path):
    _result, tmp = night_run
    dom = dump_dom(tmp_path, tmp / "paula.html")
    from htmltree import parse

    doc = parse(dom)
    assert doc.find("span", id="manager-name").text() == "Paula Success"
    assert [t.attrs["data-project"] for t in doc.find_all("div", class_="card")] == ["P1", "P3"]
    counts = {c.attrs["data-section"]: c.text() for c in doc.find_all("b", class_="count")}
    assert counts == {"act_now": "4", "platform": "0", "still_open": "0", "resolved": "0"}
    text = doc.text()
    for expected in ("Shop redesign", "Data pipeline", "Carla Client", "Tina Risky", "€500.00", "€400.00"):
        assert expected in text


def test_the_report_email_screenshot_is_not_blank(night_run, tmp_path):
    _result, tmp = night_run
    png = screenshot(tmp_path, tmp / "paula.html", "report-email.png", "800,1150")
    width, height, _rows = png_pixels(png)
    assert (width, height) == (800, 1150)
    seen = colours(png)
    assert len(seen) > 20, f"the screenshot looks blank: {len(seen)} colours"
    assert (0x1e, 0x3a, 0x8a) in seen                 # the report's blue header band was painted


def test_the_browser_builds_the_overview_page_with_its_chart_and_counts(night_run, tmp_path):
    result, _tmp = night_run
    from htmltree import parse

    doc = parse(dump_dom(tmp_path, result.out_dir / "report.html"))
    bars = {g.attrs["data-policy"]: int(g.attrs["data-total"]) for g in doc.find_all("g", class_="bar")}
    assert bars == {"client-contact-loss": 2, "talent-contact-loss": 6, "contact-risk": 1, "non-payment-notice": 1,
                    "escrow-shortfall": 1}
    assert doc.find(id="fig-decisions").text() == str(len(result.decisions))
    assert {tr.attrs["data-manager"] for tr in doc.find_all("tr", class_="manager")} == {"PS1", "PS2"}


def test_the_overview_screenshot_is_not_blank(night_run, tmp_path):
    result, _tmp = night_run
    png = screenshot(tmp_path, result.out_dir / "report.html", "overview.png", "1100,900")
    seen = colours(png)
    assert len(seen) > 20, f"the screenshot looks blank: {len(seen)} colours"
    assert (0x25, 0x63, 0xeb) in seen                 # the chart's "new" bars were painted


# ---------------------------------------------------------------- the overview page on a desktop and a phone
# (headless chromium will not make a window narrower than 500 px: the page is measured in an iframe that wide)

def measure_in_frame(tmp_path: Path, page: Path, width: int) -> dict[str, str]:
    """The page laid out `width` px wide by chromium: its scrollWidth, the frame's width, how a table row displays."""
    import html

    wrapper = tmp_path / f"measure-{width}.html"
    wrapper.write_text(
        f'<!DOCTYPE html><html><body style="margin:0"><iframe id="f" style="border:0;width:{width}px;height:900px" '
        f'srcdoc="{html.escape(page.read_text(encoding="utf-8"))}"></iframe><script>'
        'document.getElementById("f").onload = function () { var d = this.contentDocument, w = this.contentWindow;'
        ' var row = d.querySelector("table.stack tbody tr");'
        ' document.body.setAttribute("data-scroll-width", d.documentElement.scrollWidth);'
        ' document.body.setAttribute("data-width", w.innerWidth);'
        ' document.body.setAttribute("data-row", row ? w.getComputedStyle(row).display : ""); };'
        "</script></body></html>", encoding="utf-8")
    dom = chromium(tmp_path, "--window-size=1300,1000", "--dump-dom", wrapper.as_uri()).stdout
    from htmltree import parse

    body = parse(dom).find("body").attrs
    assert "data-scroll-width" in body, "the page was not measured"
    return {k.removeprefix("data-"): v for k, v in body.items() if k.startswith("data-")}


@pytest.fixture(scope="module")
def overview_nights(tmp_path_factory):
    """Three generated nights on one ledger (the second repeats the first, the third differs and has broken
    rows: long values in the rejects table)."""
    from processor.tools.generate.export import generate_export

    tmp = tmp_path_factory.mktemp("overview-browser")
    saved = os.environ.pop("SHAKERS_SMTP_HOST", None)
    try:
        for night, seed, corrupt in (("2026-11-22", 4, 0), ("2026-11-23", 4, 0), ("2026-11-24", 9, 7)):
            generate_export(tmp / night, projects=150, seed=seed, as_of=night, fmt="csv", corrupt=corrupt)
            result = run_night(tmp / night, policies_path=ROOT / "policies.yaml", out_dir=tmp / f"run-{night}",
                               ledger_path=tmp / "ledger.sqlite", workers=0, max_reject_share=1.0)
    finally:
        if saved is not None:
            os.environ["SHAKERS_SMTP_HOST"] = saved
    return result


@pytest.mark.parametrize("width, row", [(1200, "table-row"), (390, "block")])
def test_the_overview_page_never_scrolls_sideways_and_its_tables_stack_on_a_phone(overview_nights, tmp_path, width,
                                                                                  row):
    page = overview_nights.out_dir / "report.html"
    measured = measure_in_frame(tmp_path, page, width)
    assert int(measured["width"]) == width
    assert int(measured["scroll-width"]) <= width, f"{measured['scroll-width']} px wide in a {width} px window"
    assert measured["row"] == row


def test_the_sideways_check_sees_a_page_wider_than_the_phone(tmp_path):
    wide = tmp_path / "wide.html"
    wide.write_text('<!DOCTYPE html><html><body><table class="stack"><tbody><tr><td>x</td></tr></tbody></table>'
                    '<div style="width:600px">too wide</div></body></html>', encoding="utf-8")
    assert int(measure_in_frame(tmp_path, wide, 390)["scroll-width"]) > 390


def test_the_overview_screenshots_on_a_desktop_and_a_phone_are_not_blank(overview_nights, tmp_path):
    page = overview_nights.out_dir / "report.html"
    for name, size in (("overview-desktop.png", "1200,1400"), ("overview-phone.png", "500,1400")):
        seen = colours(screenshot(tmp_path, page, name, size))
        assert len(seen) > 20, f"{name} looks blank"
        assert (0x25, 0x63, 0xeb) in seen and (0x9c, 0xa3, 0xaf) in seen   # new and ongoing bars were painted


# ---------------------------------------------------------------- the demo night's email, desktop and phone

# The email inside an iframe of the phone's or the desktop's width (a headless window is at least 500 px wide):
# its srcdoc shares the probe's origin, so the probe can measure the laid-out email.
PROBE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="mail" style="border:0;width:{width}px;height:{height}px" srcdoc="{srcdoc}"></iframe>
<script>
document.getElementById("mail").onload = function () {{
  var d = this.contentDocument, w = this.contentWindow;
  var out = document.createElement("pre"); out.id = "measured";
  out.textContent = JSON.stringify({{scroll: d.documentElement.scrollWidth, width: w.innerWidth,
    act_now_top: d.getElementById("section-act_now").getBoundingClientRect().top, height: w.innerHeight}});
  document.body.appendChild(out);
}};
</script></body></html>"""


def measured(tmp_path: Path, page: Path, size: str) -> dict:
    """The email's width and where "Act now" starts, as laid out at `size` (dumped by chromium)."""
    import html
    import json

    width, height = (int(v) for v in size.split(","))
    probe = tmp_path / f"measure-{width}x{height}.html"
    probe.write_text(PROBE.format(width=width, height=height, srcdoc=html.escape(page.read_text(encoding="utf-8"))),
                     encoding="utf-8")
    dom = chromium(tmp_path, f"--window-size={max(width, 500) + 100},{height + 100}", "--virtual-time-budget=5000",
                   "--dump-dom", probe.as_uri()).stdout
    assert '<pre id="measured">' in dom, dom[-2000:]
    return json.loads(html.unescape(dom.split('<pre id="measured">')[1].split("</pre>")[0]))


@pytest.fixture(scope="module")
def demo_email(generated_nights, tmp_path_factory):
    """The biggest email of the demo night (`make demo`: 2,000 projects, seed 7), as an HTML file."""
    tmp = tmp_path_factory.mktemp("demo")
    saved = os.environ.pop("SHAKERS_SMTP_HOST", None)
    try:
        result = run_night(generated_nights(projects=2_000, seed=7), policies_path=ROOT / "policies.yaml",
                           out_dir=tmp / "run", ledger_path=tmp / "ledger.sqlite", workers=0, as_of=AS_OF)
    finally:
        if saved is not None:
            os.environ["SHAKERS_SMTP_HOST"] = saved
    biggest = max((result.out_dir / "outbox").glob("*.eml"), key=lambda p: p.stat().st_size)
    msg = email.message_from_bytes(biggest.read_bytes(), policy=email.policy.default)
    page = tmp / "demo-email.html"
    page.write_text(msg.get_body(("html",)).get_content(), encoding="utf-8")
    return page


@pytest.mark.parametrize("size", ["1200,900", "390,844"])
def test_the_demo_email_needs_no_horizontal_scrolling_and_opens_on_act_now(demo_email, tmp_path, size):
    seen = measured(tmp_path, demo_email, size)
    assert seen["width"] == int(size.split(",")[0])
    assert seen["scroll"] <= seen["width"], f"the email scrolls sideways at {size}: {seen}"
    assert 0 < seen["act_now_top"] < seen["height"], f"'Act now' is below the fold at {size}: {seen}"


@pytest.mark.parametrize("size, name", [("1200,900", "report-email-desktop.png"),
                                        ("390,844", "report-email-phone.png")])
def test_the_demo_email_screenshots_are_painted(demo_email, tmp_path, size, name):
    png = screenshot(tmp_path, demo_email, name, size)
    width, height, _rows = png_pixels(png)
    assert (width, height) == tuple(int(v) for v in size.split(","))
    seen = colours(png)
    assert len(seen) > 20 and (0x1e, 0x3a, 0x8a) in seen and (0xdc, 0x26, 0x26) in seen   # the band, Act now's cards
