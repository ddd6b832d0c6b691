"""`elvis pacs`: search a DICOMweb server (QIDO-RS), fetch studies into the local cache (WADO-RS), store results
back (STOW-RS)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

EPILOG = """examples:
  elvis pacs search --url http://pacs:8042/dicom-web --patient-id 12345 --from 2024-01-01 --to 2024-03-31
  elvis pacs search --url http://pacs:8042/dicom-web --patient-id 'PHANTOM*' --limit 50 --offset 50
  elvis pacs fetch  --url http://pacs:8042/dicom-web 1.2.840.113619.2.55.3.1234 [--cache DIR]
  elvis pacs store  --url http://pacs:8042/dicom-web reviewed_sr/*.sr.dcm maps/dicom/*.seg.dcm

Authentication: --user NAME with the password from $ELVIS_PACS_PASSWORD (else asked for), or a bearer token from
$ELVIS_PACS_TOKEN (or --token-env VAR). Credentials never go on the command line, in logs or in files.
The URL may come from $ELVIS_PACS_URL. 'fetch' takes only CR/DX images, SR documents (the report, review SRs) and SEG
results (maps stored back), downloads each instance to a temp file and renames it when complete (the cache never holds half an instance), skips instances
already cached (resume), and prints the study's cache folder, which opens like any study folder:
  elvis-viewer "$(elvis pacs fetch ... | tail -1)"
'search' takes DICOM wildcards (* and ?) in --patient-id / --accession, lists the newest --limit studies after
--offset and says "showing 1-50 of N studies" on stderr; it prints study UID, date, modalities,
series/instances; Patient ID, accession number and study description (identifiers) only with
--show-identifiers.
"""


def register(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("ELVIS_PACS_URL"),
                        help="DICOMweb root (default $ELVIS_PACS_URL)")
    common.add_argument("--user", help="basic-auth user (password from $ELVIS_PACS_PASSWORD or a prompt)")
    common.add_argument("--token-env", default="ELVIS_PACS_TOKEN", help="environment variable holding a bearer token")
    common.add_argument("--timeout", type=float, default=20.0, help="seconds per request (default 20)")
    common.add_argument("--cache", help="cache folder (default $ELVIS_PACS_CACHE or ~/.cache/elvis-viewer/pacs)")
    p = sub.add_parser("pacs", help="DICOMweb: search studies, fetch them into the local cache, store results",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    acts = p.add_subparsers(dest="action", metavar="ACTION")
    acts.required = True
    s = acts.add_parser("search", parents=[common], help="QIDO-RS study search", epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--patient-id", default="", help="Patient ID")
    s.add_argument("--accession", default="", help="accession number")
    s.add_argument("--from", dest="date_from", default="", help="study date from (YYYY-MM-DD)")
    s.add_argument("--to", dest="date_to", default="", help="study date to (YYYY-MM-DD)")
    s.add_argument("--modality", action="append", default=None,
                   help="modality in study (repeatable; default CR and DX)")
    s.add_argument("--limit", type=int, default=50, help="studies per page (default 50)")
    s.add_argument("--offset", type=int, default=0, help="skip this many (newest first) studies: the next page")
    s.add_argument("--show-identifiers", action="store_true", help="also print the Patient ID, accession and description columns")
    s.set_defaults(func=run, items=[])
    f = acts.add_parser("fetch", parents=[common], help="WADO-RS: fetch studies into the cache (resumable)",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("items", nargs="+", metavar="STUDY_UID", help="Study Instance UID(s)")
    f.set_defaults(func=run)
    t = acts.add_parser("store", parents=[common], help="STOW-RS: send DICOM files (SR, SEG) to the server",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("items", nargs="+", metavar="FILE", help="DICOM files")
    t.set_defaults(func=run)


def client_from_args(args):
    from elvis_core.pacs import PacsClient, PacsError

    if not args.url:
        raise PacsError("no server: give --url or set $ELVIS_PACS_URL")
    password = None
    if args.user:
        password = os.environ.get("ELVIS_PACS_PASSWORD")
        if password is None:
            if not sys.stdin.isatty():
                raise PacsError("--user needs the password in $ELVIS_PACS_PASSWORD (no terminal to ask on)")
            password = getpass.getpass(f"password for {args.user}: ")
    token = None if args.user else (os.environ.get(args.token_env) or None)
    return PacsClient(args.url, username=args.user, password=password, token=token, timeout=args.timeout,
                      cache_dir=args.cache)


def run(args: argparse.Namespace) -> int:
    from elvis_core.errors import ElvisError
    from elvis_core.pacs import IMAGE_MODALITIES
    from elvis_core.pacs.validate import clean_text

    client = client_from_args(args)
    if args.action == "search":
        mods = args.modality or list(IMAGE_MODALITIES)
        from elvis_core.pacs.search import search_page

        page = search_page(client, patient_id=args.patient_id, accession=args.accession, date_from=args.date_from,
                           date_to=args.date_to, modalities=mods, offset=args.offset, limit=args.limit)
        hits = page.hits
        # AccessionNumber, StudyDescription and the Patient ID identify a patient (PS3.15): only on request; every
        # server string is sanitised (no escape sequences, tabs or newlines reach the terminal or the TSV)
        cols = ["study_uid", "date", "modalities", "series", "instances"]
        if args.show_identifiers:
            cols[1:1] = ["patient_id", "accession", "description"]
        print("\t".join(cols))
        for h in hits:
            row = [h.study_uid, h.study_date, "/".join(h.modalities), str(h.n_series), str(h.n_instances)]
            if args.show_identifiers:
                row[1:1] = [h.patient_id, h.accession, h.description]
            print("\t".join(clean_text(v) for v in row))
        print(f"{page.summary()} on {client.url}", file=sys.stderr)
        return 0
    if args.action == "fetch":
        if not args.items:
            raise ElvisError("fetch needs one or more Study Instance UIDs")
        from tqdm import tqdm

        for uid in args.items:
            bar = tqdm(total=0, unit="inst", desc="fetch", file=sys.stderr, disable=not sys.stderr.isatty())

            def progress(done, total, bar=bar):
                bar.total = total
                bar.n = done
                bar.refresh()

            try:
                res = client.fetch_study(uid, progress=progress)
            finally:
                bar.close()
            print(f"{res.downloaded} downloaded, {res.cached} already cached", file=sys.stderr)
            print(res.folder)
        return 0
    # store
    if not args.items:
        raise ElvisError("store needs DICOM files")
    n = client.store(args.items)
    print(f"stored {n} object(s) on {client.url}")
    return 0
