"""``spool``: what a DICOM node's spool holds; ``--retry ID`` re-queues a failed series
or delivery. Ids are the spool's hashed names (never UIDs); a unique prefix will do."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from edgemed.errors import UsageError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("spool", help="list a DICOM node's spool; re-queue a failed item")
    p.add_argument("dir", metavar="DIR", help="the spool directory of `edgemed listen`")
    p.add_argument("--retry", default=None, metavar="ID", help="re-queue a failed series/delivery")
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
    p.set_defaults(handler=_cmd_spool)


def listing(spool: Any) -> dict[str, Any]:
    """The spool's series and deliveries as JSON data."""
    series = [
        {
            "id": s.sid,
            "instances": s.instances,
            "state": s.state,
            "code": s.code,
            "result": s.result,
        }
        for s in spool.series()
    ]
    deliveries = [
        {
            "id": d.rid,
            "series": d.series,
            "state": d.state,
            "attempts": d.attempts,
            "code": d.code,
            "next_try": d.next_try,
            "files": d.files,
        }
        for d in spool.deliveries()
    ]
    return {"series": series, "deliveries": deliveries}


def _cmd_spool(args: argparse.Namespace) -> int:
    from edgemed.dicomnode.spool import Spool

    if not (Path(args.dir) / "series").is_dir():
        raise UsageError(f"{args.dir} is not a spool of `edgemed listen`")
    spool = Spool(args.dir)
    if args.retry:
        what = spool.retry(args.retry)
        print(f"re-queued {what} {args.retry}")
        return 0
    data = listing(spool)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"series ({len(data['series'])})")
    for s in data["series"]:
        code = f" {s['code']}" if s["code"] else ""
        print(f"  {s['id'][:16]}  {s['instances']:5d} instances  {s['state']}{code}")
    print(f"deliveries ({len(data['deliveries'])})")
    now = time.time()
    for d in data["deliveries"]:
        extra = f" {d['code']}" if d["code"] else ""
        if d["state"] == "pending" and d["next_try"] > now:
            extra += f", next try in {d['next_try'] - now:.0f} s"
        print(
            f"  {d['id'][:16]}  series {d['series'][:16]}  {d['state']}"
            f"  {d['attempts']} attempt(s){extra}"
        )
    return 0
