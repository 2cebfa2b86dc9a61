"""The `saga` command: one entry point, one sub-command per job.

Each sub-command imports what it needs when it runs, so `saga validate` and `saga simulate`
load only the pure core.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _cmd_validate(args: argparse.Namespace) -> int:
    from saga_cli.offline import validate_files

    return validate_files(args.files, out=sys.stdout, err=sys.stderr)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from saga_cli.offline import explore_file, simulate_file

    if args.explore:
        scripted = [f for f, v in (("--fail", args.fail), ("--timeout", args.timeout)) if v]
        scripted += ["--cancel-after"] if args.cancel_after is not None else []
        if scripted:
            print(
                f"{', '.join(scripted)}: not with --explore, which tries every failure itself",
                file=sys.stderr,
            )
            return 2
        return explore_file(
            args.workflow,
            respond=args.respond,
            payload=args.payload,
            fmt=args.format or "text",
            out=sys.stdout,
            err=sys.stderr,
        )
    if args.format is not None:
        print("--format: only with --explore", file=sys.stderr)
        return 2
    return simulate_file(
        args.workflow,
        fail=args.fail,
        timeout=args.timeout,
        cancel_after=args.cancel_after,
        payload=args.payload,
        out=sys.stdout,
        err=sys.stderr,
        respond=args.respond,
    )


def _cmd_worker(args: argparse.Namespace) -> int:
    from saga_cli.worker import run_worker

    return run_worker(args.config)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from saga_cli.worker import run_migrate

    return run_migrate(args.config)


def _cmd_serve(args: argparse.Namespace) -> int:
    from saga_cli.serve import run_serve

    return run_serve(args.config, args.host, args.port, args.grpc_port)


def _cmd_demo(args: argparse.Namespace) -> int:
    from saga_cli.demo import run_demo

    return run_demo()


def _log_format_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines: text (readable) or json (one object per line); default: "
        "$SAGA_LOG_FORMAT, else text on a terminal and json otherwise",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saga", description="Saga orchestration server")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("validate", help="check workflow files without a server")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("simulate", help="replay a workflow against scripted participant outcomes")
    p.add_argument("workflow", metavar="WORKFLOW.yaml")
    p.add_argument(
        "--fail",
        action="append",
        default=[],
        metavar="STEP[:CODE]",
        help="every attempt of STEP fails with CODE (default UNAVAILABLE); repeatable",
    )
    p.add_argument(
        "--respond",
        action="append",
        default=[],
        metavar="STEP=JSON",
        help="STEP's participant answers with this JSON object (default {}); repeatable",
    )
    p.add_argument(
        "--timeout",
        action="append",
        default=[],
        metavar="STEP",
        help="every attempt of STEP hits its deadline; repeatable",
    )
    p.add_argument("--cancel-after", metavar="STEP", help="a cancel arrives once STEP has run")
    p.add_argument("--payload", default="{}", help="saga payload as JSON (default {})")
    p.add_argument(
        "--explore",
        action="store_true",
        help="drive every failure point of the workflow and print its compensation matrix and "
        "warnings; exit 0 without warnings, 1 with, 2 for an invalid file",
    )
    p.add_argument(
        "--format",
        choices=("text", "markdown", "json"),
        help="with --explore: text (default), markdown or json",
    )
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("serve", help="REST + gRPC + saga execution in one command")
    p.add_argument("--config", help="config file (default: $CONFIG_PATH or config/config.yaml)")
    p.add_argument("--host", help="address to listen on (REST and gRPC)")
    p.add_argument("--port", type=int, help="REST port (default 8080)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 50051)")
    _log_format_flag(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("demo", help="run demo participants and a server, and show two sagas")
    _log_format_flag(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("worker", help="execute sagas only (no API) until SIGTERM")
    p.add_argument("--config", help="config file (default: $CONFIG_PATH or config/config.yaml)")
    _log_format_flag(p)
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("migrate", help="apply the store's schema migrations")
    p.add_argument("--config", help="config file (default: $CONFIG_PATH or config/config.yaml)")
    _log_format_flag(p)
    p.set_defaults(func=_cmd_migrate)

    from saga_cli.client import register as register_client

    register_client(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "log_format", None):
        # Through the environment, so the processes this one starts log the same way.
        os.environ["SAGA_LOG_FORMAT"] = args.log_format
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
