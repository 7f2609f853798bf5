#!/usr/bin/python3
"""Re-hash the RECORD lines of files edited after pip installed them (the entry points
whose shebang named the staging directory), so that RECORD matches the package and does
not depend on where it was built. Usage: fix-records.py SITE_PACKAGES"""
import base64
import csv
import hashlib
import io
import sys
from pathlib import Path

site = Path(sys.argv[1])
for record in sorted(site.glob("*.dist-info/RECORD")):
    rows = list(csv.reader(io.StringIO(record.read_text())))
    for row in rows:
        target = site / row[0]
        if row[0].startswith("../") and row[1] and target.is_file():
            data = target.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            row[1:3] = [f"sha256={digest}", str(len(data))]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    record.write_text(out.getvalue())
