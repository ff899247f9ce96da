"""Print `mo-rl compare --html`'s report to PDF with headless Chromium and check that no column is lost (issue 28).

    python scripts/report_pdf.py report.html [out_dir]

Writes out_dir/report.pdf and one PNG per page (pdftoppm, 80 dpi) to look at, then checks that every column header
of every table in the HTML (<th>) is in the PDF's text (pdftotext -layout): a table cut at the page's right edge
loses its right-hand headers. Needs `chromium` and poppler's `pdftoppm`/`pdftotext` (Debian: apt-get install
chromium poppler-utils). Exit 1 when a header is missing, naming it.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from pathlib import Path


def main(report: str, out: str = "report-pdf") -> int:
    src, out_dir = Path(report).resolve(), Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("chromium", "pdftoppm", "pdftotext"):
        if shutil.which(tool) is None:
            print(f"error: {tool} not found (Debian: apt-get install chromium poppler-utils)", file=sys.stderr)
            return 2
    pdf = out_dir / "report.pdf"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                    f"--print-to-pdf={pdf}", src.as_uri()], check=True, capture_output=True, timeout=300)
    subprocess.run(["pdftoppm", "-png", "-r", "80", str(pdf), str(out_dir / "page")], check=True)
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True,
                          text=True).stdout
    heads = sorted({html.unescape(h).strip() for h in re.findall(r"<th[^>]*>(.*?)</th>", src.read_text(), re.S)}
                   - {""})
    missing = [h for h in heads if h not in text]
    pages = len(list(out_dir.glob("page-*.png")))
    print(f"{pdf}: {pages} pages; {len(heads) - len(missing)} of {len(heads)} column headers in the PDF's text")
    for h in missing:
        print(f"missing: {h!r}")
    return 1 if missing else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:3]))
