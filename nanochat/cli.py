"""The `nanochat` command: one entry point for everything a person runs from a shell.

    nanochat run --profile tiny           execute the notebooks headlessly (pipeline.py)
    nanochat profiles                     each profile's expected time and cost (stages.py)
    nanochat report reset|generate        the report card (report.py)
    nanochat chat [--prompt TEXT]         talk to the most trained model (ui/terminal.py)

Each command's arguments are declared here and its work is done by the module named; a
module is imported only when its command runs, so `nanochat profiles` or a bad -p value
answers at once, without loading torch.
"""
import argparse
import sys
from pathlib import Path

from nanochat import ui
from nanochat.common import PHASES
from nanochat.stages import NOTEBOOKS_DIR, PipelineError, list_profiles


def add_run(commands) -> None:
    r = commands.add_parser("run", help="execute the notebooks in order (resumes a stopped run)",
                            description="Execute the numbered notebooks in order with papermill "
                                        "(torchrun for stages with nproc > 1). Complete stages are "
                                        "skipped, so the same command resumes a stopped run.")
    r.add_argument("--profile", default="tiny",
                   help="a profile in nanochat/profiles (tiny, cpu, speedrun, d26, d32) or a .toml path "
                        "(default: tiny)")
    r.add_argument("--run", help="run name: executed notebooks go to BASE_DIR/runs/RUN "
                                 "(default: the profile's name)")
    r.add_argument("--from", dest="start", metavar="NN", help="start at stage NN (e.g. 05 or 05_pretrain)")
    r.add_argument("--only", metavar="NN", help="run stage NN only")
    r.add_argument("--force", action="store_true", help="rerun the selected stages even if complete")
    r.add_argument("-p", "--param", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="set a parameter in every stage that declares it, or in one stage with "
                        "NN_name.KEY=VALUE; VALUE is a TOML/JSON literal, else a string")
    r.add_argument("--notebooks", metavar="DIR", default=str(NOTEBOOKS_DIR),
                   help="folder of NN_name.ipynb (default: %(default)s)")
    r.add_argument("--cell-timeout", type=float, metavar="S",
                   help="stop a cell after S seconds (default: the profile's cell_timeout, else none)")
    r.add_argument("--dist-timeout", type=float, default=600.0, metavar="S",
                   help="process-group timeout for torchrun stages, as NANOCHAT_DIST_TIMEOUT (default: %(default)s)")
    r.add_argument("--dry-run", action="store_true", help="validate and show the plan, run nothing")
    nodes = r.add_argument_group("several nodes (torchrun's rendezvous; one base dir shared by all nodes)")
    nodes.add_argument("--nnodes", type=int, default=1, metavar="N", help="nodes in the run (default: %(default)s)")
    nodes.add_argument("--node-rank", type=int, default=0, metavar="R", help="this node's rank, 0..N-1")
    nodes.add_argument("--master-addr", default="127.0.0.1", metavar="HOST", help="node 0's address")
    nodes.add_argument("--master-port", type=int, default=29500, metavar="PORT",
                       help="node 0's port; the run also uses the next 100 (default: %(default)s)")
    nodes.add_argument("--nproc-per-node", type=int, metavar="K", help="ranks per node for every distributed stage "
                                                                       "(default: the profile's nproc)")


def add_report(commands) -> None:
    r = commands.add_parser("report", help="the report card: reset | generate", description="The run's report card.")
    actions = r.add_subparsers(dest="action", required=True, metavar="ACTION")
    reset = actions.add_parser("reset", help="start a new card: write the header, drop old sections")
    reset.add_argument("--profile", help="add this profile's expected time and cost to the header")
    generate = actions.add_parser("generate", help="assemble BASE_DIR/report.md and copy it here")
    generate.add_argument("--run", help="also count this run's stage times (BASE_DIR/runs/RUN)")


def bounded(kind, name: str):
    """An argparse type: a number of `kind` within the web server's limits for `name` (nanochat/ui)."""
    low, high = getattr(ui.Limits(), name)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {text}")
        return value

    return parse


def available_device(text: str) -> str:
    """An argparse type: cuda[:N], mps or cpu, and present on this machine (else a one-line error, not a failed load)."""
    from nanochat.common import available_devices

    kind = text.split(":")[0]
    present = available_devices()
    if kind not in present:
        raise argparse.ArgumentTypeError(f"must be cuda, mps or cpu, not {text!r}")
    if not present[kind]:
        raise argparse.ArgumentTypeError(f"{text}: this machine has no such device; leave --device out to use the best "
                                         f"there is")
    return text


def add_model_arguments(c) -> None:
    """Which model to talk to and how to sample from it: shared by `chat` and `serve`."""
    c.add_argument("--phase", choices=PHASES, help="which model (default: the most trained there is)")
    c.add_argument("--depth", type=int, help="model depth (default: the largest of that phase)")
    c.add_argument("--step", type=int, help="checkpoint step (default: the last)")
    c.add_argument("--temperature", type=bounded(float, "temperature"), default=ui.TEMPERATURE, help="0 = greedy (0 to 2)")
    c.add_argument("--top-k", type=bounded(int, "top_k"), default=ui.TOP_K,
                   help="sample from the k likeliest tokens; 0 = from all of them")
    c.add_argument("--max-tokens", type=bounded(int, "max_tokens"), default=ui.MAX_TOKENS, help="longest reply, in tokens")
    c.add_argument("--device", type=available_device, help="cuda, mps or cpu (default: the best there is)")


def add_chat(commands) -> None:
    c = commands.add_parser("chat", help="chat with a trained model in the terminal",
                            description="Chat with a trained model in the terminal.")
    add_model_arguments(c)
    c.add_argument("-p", "--prompt", help="ask one question, print the answer and exit")
    c.add_argument("--seed", type=int, default=42)


def add_serve(commands) -> None:
    c = commands.add_parser("serve", help="chat with a trained model in a browser (a web server)",
                            description="Serve the chat page and its streaming API (nanochat/ui/web.py).")
    add_model_arguments(c)
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    c.add_argument("--port", type=int, default=8000)
    c.add_argument("--workers", type=int, help="replies generated at once (default: one per GPU, else 1)")
    c.add_argument("--queue", type=int, default=16, help="requests that may wait for a worker; more get 503")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanochat", description="The nanochat course from the command line.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the full traceback of an error, not just its message")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run(commands)
    commands.add_parser("profiles", help="list the profiles with their expected time and cost")
    add_report(commands)
    add_chat(commands)
    add_serve(commands)
    return parser


def report_command(args) -> int:
    """nanochat report reset|generate."""
    from nanochat import common, report
    from nanochat.stages import load_profile

    if args.action == "reset":
        print(f"report header: {report.reset(load_profile(args.profile) if args.profile else None)}")
    else:
        run_dir = Path(common.run_dir(args.run)) if args.run else None
        print(f"report card: {report.generate(run_dir=run_dir)} (copied to ./report.md)")
    return 0


def is_user_error(error: Exception) -> bool:
    """A missing file, a failed download, a corrupt checkpoint, no sandbox: their message says what to do, so a
    person sees it alone, not buried under a traceback."""
    from nanochat.hub import DownloadError

    kinds = (FileNotFoundError, DownloadError)
    if checkpoint := sys.modules.get("nanochat.checkpoint"):  # not imported: it cannot have raised
        kinds += (checkpoint.CheckpointError,)
    if execution := sys.modules.get("nanochat.execution"):  # no sandbox on this machine: the message says how to get one
        kinds += (execution.SandboxUnavailable,)
    return isinstance(error, kinds)


def main(argv: list[str] | None = None) -> int:
    """The `nanochat` console command; returns the exit code (2 for bad input, 1 for a failed stage)."""
    from nanochat.launch import StageFailed

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "run":
            from nanochat.pipeline import run
            run(args)
            return 0
        if args.command == "profiles":
            list_profiles()
            return 0
        if args.command == "report":
            return report_command(args)
        if args.command == "serve":
            from nanochat.ui import web
            return web.serve(args)
        from nanochat.ui import terminal
        return terminal.chat(args)
    except PipelineError as e:
        print(f"nanochat: error: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"\nnanochat: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nnanochat: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if args.verbose or not is_user_error(e):
            raise
        print(f"nanochat: error: {e}\n(nanochat --verbose {args.command} ... shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
