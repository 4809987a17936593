"""The `ipex-fleet` command line. Every user error is one line and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Callable

from ipex_fleet.common.errors import UserError

if TYPE_CHECKING:  # imported where used: a host's `ipex-fleet metrics` (every record) needs none of the lab
    from ipex_fleet.lab import Lab

Handler = Callable[[argparse.Namespace], int]


def _lab_parser(sub: argparse._SubParsersAction) -> None:
    # --root works before or after the lab command (`lab --root D up 3` and `lab up 3 --root D`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=argparse.SUPPRESS,
                        help="lab directory (default $IPEX_FLEET_LAB_ROOT or /srv/ipex-fleet-lab)")
    common.add_argument("--net", default=argparse.SUPPRESS,
                        help="loopback /24 for the hosts, used by `up` (default 127.0.10)")
    lab = sub.add_parser("lab", help="run a local fleet of NixOS-like hosts (systemd, sshd, Nix)",
                         parents=[common],
                         description="The lab: NixOS-like hosts on loopback, each a systemd-nspawn container "
                                     "with systemd as PID 1, its own sshd, Nix store and journal.")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")

    up = lab_sub.add_parser("up", parents=[common], help="boot hosts host1..hostN, each with a first generation")
    up.add_argument("count", type=int, metavar="N")
    up.add_argument("--deploy-user", metavar="NAME",
                    help="add a user that logs in with the lab's key and deploys through sudo")
    up.set_defaults(func=_lab_up)
    lab_sub.add_parser("down", parents=[common], help="power every host off; their disks stay").set_defaults(
        func=_lab_down)
    lab_sub.add_parser("destroy", parents=[common],
                       help="stop every host and remove the lab entirely").set_defaults(func=_lab_destroy)
    st = lab_sub.add_parser("status", parents=[common],
                            help="each host's state, faults and generation; the off-machine packet counter")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_lab_status)
    for name, helptext, func in (
        ("cut", "drop SSH traffic to HOST silently (nftables)", _lab_cut),
        ("heal", "undo `cut` and `isolate`", _lab_heal),
        ("isolate", "give HOST no route anywhere but its own address (SSH to it still works)", _lab_isolate),
        ("freeze", "freeze every process of HOST (its cgroup)", _lab_freeze),
        ("thaw", "undo `freeze`", _lab_thaw),
        ("reboot", "reboot HOST cleanly and wait for its new boot", _lab_reboot),
        ("crash", "kill HOST hard (every process at once); it boots again", _lab_crash),
    ):
        p = lab_sub.add_parser(name, parents=[common], help=helptext)
        p.add_argument("host")
        if name == "cut":
            p.add_argument("--reject", action="store_true", help="refuse connections at once instead of dropping")
        p.set_defaults(func=func)
    lab_sub.add_parser("release", parents=[common],
                       help="publish a new release of the lab's input on its channel (then: ipex-fleet update)"
                       ).set_defaults(func=_lab_release)
    ex = lab_sub.add_parser("exec", parents=[common],
                            help="run a command on HOST over SSH: lab exec [--timeout S] HOST -- CMD...")
    ex.add_argument("--timeout", type=float, default=600, help="seconds (give it before HOST)")
    ex.add_argument("host")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    ex.set_defaults(func=_lab_exec)
    cfg = lab_sub.add_parser("config", parents=[common], help="set HOST's lab knobs (take effect at the next deploy)",
                             description="Knobs: " + "; ".join(f"{k}: {v}" for k, v in _knobs().items()))
    cfg.add_argument("host")
    cfg.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    cfg.set_defaults(func=_lab_config)


def _lab(args: argparse.Namespace) -> Lab:
    from ipex_fleet.lab import Lab

    return Lab(getattr(args, "root", None))


def _knobs() -> dict[str, str]:
    from ipex_fleet.lab.knobs import KNOBS

    return KNOBS


def _lab_up(args: argparse.Namespace) -> int:
    lab = _lab(args)
    started = lab.up(args.count, getattr(args, "net", None), args.deploy_user)
    print(f"lab at {lab.layout.root}: {args.count} host(s) up"
          + (f", started {', '.join(started)}" if started else ", all already running"))
    print(f"inventory: IPEX_FLEET_LAB_ROOT={lab.layout.root} pyinfra inventories/lab.py deploys/prod.py -y")
    return 0


def _lab_down(args: argparse.Namespace) -> int:
    _lab(args).down()
    return 0


def _lab_destroy(args: argparse.Namespace) -> int:
    _lab(args).destroy()
    return 0


def _lab_status(args: argparse.Namespace) -> int:
    lab = _lab(args)
    rows, leaks = lab.status(), lab.leaks()
    if args.json:
        print(json.dumps({"hosts": [r.__dict__ for r in rows], "packets_off_loopback": leaks["leaks"]}, indent=2))
        return 0
    print(f"{'HOST':<8} {'ADDRESS':<15} {'STATE':<8} {'FAULT':<8} {'GEN':>4}  SETTINGS")
    for r in rows:
        knobs = " ".join(f"{k}={v}" for k, v in sorted(r.settings.items()) if k != "address")
        print(f"{r.name:<8} {r.address:<15} {r.state:<8} {r.cut or '-':<8} {r.generation if r.generation is not None else '-':>4}  {knobs}")
    print(f"packets from the lab's hosts to addresses off loopback (dropped): {leaks['leaks']}")
    return 0


def _lab_cut(args: argparse.Namespace) -> int:
    _lab(args).cut(args.host, "reject" if args.reject else "drop")
    return 0


def _lab_heal(args: argparse.Namespace) -> int:
    _lab(args).heal(args.host)
    return 0


def _lab_isolate(args: argparse.Namespace) -> int:
    _lab(args).isolate(args.host)
    return 0


def _lab_freeze(args: argparse.Namespace) -> int:
    _lab(args).freeze(args.host)
    return 0


def _lab_thaw(args: argparse.Namespace) -> int:
    _lab(args).thaw(args.host)
    return 0


def _lab_reboot(args: argparse.Namespace) -> int:
    _lab(args).reboot(args.host)
    return 0


def _lab_crash(args: argparse.Namespace) -> int:
    _lab(args).crash(args.host)
    return 0


def _lab_release(args: argparse.Namespace) -> int:
    lab = _lab(args)
    if not lab.layout.flake_dir.is_dir():
        raise UserError(f"no lab at {lab.layout.root}; start one with: ipex-fleet lab up N")
    print(f"labpkgs release {lab.release()} is on the lab's channel; `ipex-fleet update INVENTORY` locks it")
    return 0


def _lab_exec(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    return _lab(args).exec(args.host, argv, timeout=args.timeout)


def _lab_config(args: argparse.Namespace) -> int:
    settings = _lab(args).config(args.host, args.assignments)
    print(" ".join(f"{k}={v}" for k, v in sorted(settings.items())))
    return 0


# Host-side tools keep their own parsers; `ipex-fleet probe|bench ...` hands them the rest.
PASSTHROUGH = {
    "probe": ("ipex_fleet.host.probe.__main__", "GPU and service health checks on this host (levels 1-3)"),
    "bench": ("ipex_fleet.host.bench.__main__", "device-generic benchmarks on this host, with a baseline gate"),
    "models": ("ipex_fleet.host.models.__main__", "install a model plan on this host (run by the deploy)"),
    "metrics": ("ipex_fleet.host.metrics", "write this host's deployment metrics for node_exporter's textfile collector"),
}


# The commands whose work is a pyinfra run: its interpreter is started first thing.
RUNS_PYINFRA = frozenset({"rollout", "maintain", "status", "plan", "rollback"})


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; for a command that runs pyinfra, without `enroll`'s (its imports, jinja2
    and the PCI tables, are 25 ms of every rollout's start)."""
    parser = argparse.ArgumentParser(
        prog="ipex-fleet",
        description="Roll a NixOS flake out to GPU hosts with pyinfra: staged, health-checked, self-reverting. "
                    "Run it from the repository root.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _lab_parser(sub)
    from ipex_fleet.fleetcli import add_parsers

    add_parsers(sub)
    if command not in RUNS_PYINFRA:
        from ipex_fleet.enroll.cli import add_parser as add_enroll

        add_enroll(sub)
    for name, (_module, helptext) in PASSTHROUGH.items():
        sub.add_parser(name, help=helptext, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH:
        import importlib

        return importlib.import_module(PASSTHROUGH[argv[0]][0]).main(argv[1:])
    if argv and argv[0] in RUNS_PYINFRA:
        from ipex_fleet.fleet import pyinfra_run

        pyinfra_run.prestart()  # its imports overlap ours and the planning (ipex_fleet.fleet.pyinfra_child)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"ipex-fleet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ipex-fleet: interrupted", file=sys.stderr)
        return 130
