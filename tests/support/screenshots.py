"""`make screenshots`: every page of tests/support/page_tour.py, rendered by
headless Chromium against a fresh local stack, at desktop width and at 360 px,
into docs/screenshots/<page>-<desktop|mobile>.png (committed; the README
shows them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.support import page_tour
from tests.support.page_tour import DESKTOP, MOBILE, ROOT, TOUR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args(argv)
    executable = page_tour.chromium_path()
    if not executable:
        print("no chromium found: set CHROMIUM_PATH (scripts/ensure-chromium installs Debian's)", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    from local.stack import LocalStack

    args.out.mkdir(parents=True, exist_ok=True)
    with LocalStack() as stack, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=page_tour.CHROMIUM_FLAGS)
        for name in TOUR:
            for viewport in (DESKTOP, MOBILE):
                context, page = page_tour.visit(name, browser, stack, viewport)
                try:
                    # Nothing on the page changes from run to run except the reference.
                    page.evaluate("for (const c of document.querySelectorAll('.ref code')) c.textContent = 'a1b2c3d4'")
                    path = args.out / f"{name}-{viewport.name}.png"
                    page.screenshot(path=str(path), full_page=True)
                finally:
                    context.close()
                print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
