"""The report screenshots in docs/img: open a report.html in headless Chromium (tests/browser.py), click and
hover as told, save the window.

    python docs/screenshot.py OUT/report.html docs/img/report_lens.png --click 'th.fl-col[data-c="9"]' \
        --hover 'td.fl-cell[data-r="20"][data-c="9"]' --size 1300x900
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

from browser import console_errors, hover, open_page, start_browser  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("report")
    p.add_argument("png")
    p.add_argument("--click", action="append", default=[], help="CSS selector to click (repeatable, in order)")
    p.add_argument("--hover", help="CSS selector to hover last (its tooltip shows in the picture)")
    p.add_argument("--scroll", help="CSS selector to scroll to the top of the window first")
    p.add_argument("--size", default="1300x900", help="window WIDTHxHEIGHT")
    args = p.parse_args()
    width, height = map(int, args.size.split("x"))
    driver = start_browser(width, height)
    try:
        errors = console_errors(open_page(driver, args.report))
        if errors:
            raise SystemExit(f"{args.report}: console errors {errors}")
        for sel in args.click:
            driver.find_element("css selector", sel).click()
        if args.scroll:
            driver.execute_script("arguments[0].scrollIntoView()", driver.find_element("css selector", args.scroll))
        if args.hover:
            hover(driver, driver.find_element("css selector", args.hover))
        driver.save_screenshot(args.png)
    finally:
        driver.quit()
    print(args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
