"""The `aekit` command: core subcommands here, the rest contributed by packages.

Packages built on aekit (export, codec, detector, bench) register their subcommands
through the `aekit.commands` entry-point group, so this root never imports them.
Exit codes: 0 success; 1 the job ran and found something (screen: anomalies flagged);
2 usage errors, bad input or a job with failed files; 130 interrupted; 141 the reader of
stdout went away (`aekit info | head`: quietly, as SIGPIPE would).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import warnings
from importlib.metadata import entry_points
from typing import Callable

EXIT_OK, EXIT_FOUND, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 128 + 13  # as a process killed by SIGPIPE
EXIT_TERMINATED = 128 + 15  # SIGTERM (kill, a scheduler's stop): the same clean-up as Ctrl-C, then this code


class Terminated(KeyboardInterrupt):
    """SIGTERM raised in the main thread, so a stopped job unwinds as after Ctrl-C: temp files removed,
    records so far kept for the rerun."""


_TERMINATED = threading.Event()  # set by the handler: a SIGTERM that a library wrapped in its own error still counts


def _terminate(signum: int, frame: object) -> None:
    _TERMINATED.set()
    raise Terminated()


class CLIError(Exception):
    """An error to print as one line (no traceback) with exit code 2."""


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where it says something.

    argparse's ArgumentDefaultsHelpFormatter appends it to every option with help text, so an
    option whose help already names its default in words ("(default: only on a terminal)")
    or whose default is None (unset) got a second, meaningless "(default: None)", and a switch such as
    `--no-post-filter` a misleading "(default: True)".
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or "default" in text or "%(default)" in text or \
                isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return text  # a switch: "(default: True)" after --no-… reads as if it were on
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose subcommands (here and in every package) get DefaultsHelpFormatter."""

    def __init__(self, *args, **kwargs):
        if kwargs.get("formatter_class") in (None, argparse.ArgumentDefaultsHelpFormatter):
            kwargs["formatter_class"] = DefaultsHelpFormatter
        super().__init__(*args, **kwargs)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (a test's capture, a redirected stream)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def at_least(low: float, what: str = "", kind: type = int):
    """argparse type: a number of `kind` >= low, else a usage error naming the bound (and why, if `what`)."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{v} is below {low}{what}")
        return v

    return parse


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1)."""
    v = at_least(0.0, kind=float)(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"{v} is not below 1 (a fraction of the images)")
    return v


def setup_logging(verbosity: int = 0) -> None:
    """Diagnostics go to stderr through the "aekit" loggers; results stay on stdout.

    verbosity: -2 errors only, -1 warnings, 0 info (progress lines; the CLI default), 1+ debug.
    Library users who never call this see only warnings, as with any library.
    """
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(max(verbosity, -2), logging.DEBUG)
    log = logging.getLogger("aekit")
    for h in [h for h in log.handlers if isinstance(h, _StderrHandler)]:
        log.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s" if level < logging.INFO else "%(message)s"))
    log.addHandler(handler)
    log.setLevel(level)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings (recoverable oddities, `warnings.warn`) as one line: "warning: ..."."""
    logging.getLogger("aekit").warning("warning: %s", message)


CORE_COMMANDS = ("train", "data", "sample", "interpolate")
# Start-up shortcut: the entry point that registers a command, so `aekit decompress ...` loads only
# that package's CLI (not torch-free-but-heavy detector, bench and serve modules). A hint only:
# a command not found there falls back to loading every entry point, so nothing is lost.
COMMAND_HOME = {"compress": "codec", "decompress": "codec", "evaluate": "codec", "dump": "dump",
                "denoise": "denoise", "demo": "demo", "export": "export", "models": "export", "info": "export", "import": "export",
                "add-context": "export", "fit-context": "fit-context", "screen": "detector", "bench": "bench", "serve": "serve", "experiment": "experiment"}


def requested_command(argv: list[str]) -> str | None:
    """The subcommand named in argv (the first word that is not a root option), or None."""
    for a in argv:
        if a in ("-h", "--help", "--version"):
            return None
        if not a.startswith("-"):
            return a
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The root parser; given argv naming a command, only the parsers that command needs are built
    (the command's own help and errors are unchanged), else every command's."""
    from aekit import __version__

    parser = Parser(
        prog="aekit", description="Train autoencoders, export them to ONNX, compress and screen images. "
        "Diagnostics go to stderr (-q/-v set how many), results to stdout.",
    )
    parser.add_argument("--version", action="version", version=f"aekit {__version__}")
    # own dests: a subcommand's option of the same name (bench --quiet) must not overwrite these
    parser.add_argument("-v", "--verbose", action="count", default=0, dest="log_more",
                        help="more diagnostics (-v: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, dest="log_less",
                        help="fewer diagnostics (-q: warnings and errors only, -qq: errors only)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    want = requested_command(argv) if argv is not None else None
    if argv is not None and want is None and "--version" in argv and not {"-h", "--help"} & set(argv):
        return parser  # prints the version and exits: no subcommand needed
    eps = sorted(entry_points(group="aekit.commands"), key=lambda e: e.name)
    home = [ep for ep in eps if ep.name == COMMAND_HOME.get(want or "")]
    if want in CORE_COMMANDS or home:
        if want in CORE_COMMANDS:
            {"train": add_train_parser, "data": add_data_parser}.get(want, add_generate_parsers)(sub)
        else:
            _register(home, sub)
        if want in sub.choices:
            return parser
        parser = build_parser()  # the hint was wrong: build everything
        return parser
    add_train_parser(sub)
    add_data_parser(sub)
    add_generate_parsers(sub)
    _register(eps, sub)
    return parser


def _register(eps: list, sub: argparse._SubParsersAction) -> None:
    for ep in eps:
        try:
            register: Callable[[argparse._SubParsersAction], None] = ep.load()
        except ImportError as e:
            logging.getLogger(__name__).warning("aekit: subcommands of %s unavailable (%s)", ep.name, e)
            continue
        register(sub)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a closed stdout (a pager or `head` that stopped reading) ends it quietly; SIGTERM
    stops it as Ctrl-C does (no temp files left), exit 143, whenever it arrives (also while the command line is
    built or a library starts, which may wrap it in an error of its own)."""
    import signal

    main_thread = threading.current_thread() is threading.main_thread()
    _TERMINATED.clear()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        try:
            return _main(argv)
        finally:  # also after argparse's SystemExit (--help): a closed pipe surfaces here, not at exit
            sys.stdout.flush()
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
    except BrokenPipeError:
        try:  # point stdout at /dev/null so the interpreter's final flush cannot fail again
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, sys.stdout.fileno())
            os.close(fd)
        except (OSError, ValueError):  # stdout without a descriptor (a test's capture)
            pass
        return EXIT_BROKEN_PIPE
    except (Terminated, Exception):  # a SIGTERM before _main's handlers, or wrapped (ImportError: init failed)
        if not _TERMINATED.is_set():
            raise
        print("aekit: terminated", file=sys.stderr)
        return EXIT_TERMINATED


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the deepest subcommand that args chose (`aekit detector evaluate` -> that one's)."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if chosen is None or chosen not in subs[0].choices:
            return parser
        parser = subs[0].choices[chosen]


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else list(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the (sub)command's own usage line, not the top-level one
        _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    setup_logging(args.log_more - args.log_less)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        return int(args.func(args) or 0)
    except Terminated:
        raise  # main() reports it (also when it arrives before this try)
    except KeyboardInterrupt:
        print("aekit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CLIError, FileNotFoundError, ValueError) as e:
        print(f"aekit {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:  # a folder it may not write, a read-only or full disk: one line, never exit 1's meaning
        if isinstance(e, BrokenPipeError):
            raise  # `aekit … | head`: main's own handling (exit 141)
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"aekit {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # known error types of the packages carry their own messages
        if type(e).__name__.endswith("Error") and type(e).__module__.split(".")[0] in KNOWN_PACKAGES:
            print(f"aekit {args.command}: error: {e}", file=sys.stderr)
            return EXIT_ERROR
        raise
    finally:
        warnings.showwarning = shown


KNOWN_PACKAGES = ("aekit",)  # every package lives under the one import root


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from aekit.config import ModelConfig
    from aekit.data import RESIZE_POLICIES, DataConfig

    from aekit.config import ARCHITECTURE_NAMES, BACKBONES, RD_FACTORS

    m, d = ModelConfig(), DataConfig()
    p = sub.add_parser("train", help="train an autoencoder on an image folder",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train on a flat image folder or one subfolder per class.")
    p.add_argument("data", help="training image folder")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs)")
    p.add_argument("--val-data", help="validation folder (default: split off --val-fraction of DATA)")
    p.add_argument("--ratio", type=int, choices=(4, 9), default=m.ratio, help="latent ratio 1/N")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="image channels (default: from the whole folder: 1 if every image is grayscale, "
                        "3 if any is colour; printed)")
    p.add_argument("--arch", default=m.arch, choices=ARCHITECTURE_NAMES,
                   help="dcgan | resnet (residual) | pretrained (ResNet trunk encoder) | vae")
    p.add_argument("--backbone", default=m.backbone, choices=BACKBONES, help="--arch pretrained: trunk")
    p.add_argument("--encoder-weights", help="--arch pretrained: local torchvision ResNet state_dict "
                   "(default: torchvision's ImageNet weights if cached, else random init)")
    # defaults of these live in TrainConfig (importing it here would import torch for every command)
    p.add_argument("--freeze-epochs", type=int, help="--arch pretrained: first epochs train the decoder "
                   "with the trunk frozen; --arch gdn-hp with --init-from: first epochs train the hyperprior "
                   "with the transforms frozen [1]")
    p.add_argument("--lr-ratio", type=float, help="--arch pretrained: lr of each earlier encoder group "
                   "relative to the next one's [0.3]")
    p.add_argument("--kl-weight", type=float, help="--arch vae: weight of the KL term [0.01]")
    p.add_argument("--width", type=at_least(1), default=m.width, help="channels of the first conv layer")
    p.add_argument("--encoder-width", type=at_least(1), help="--arch gdn/gdn-hp: channels of the analysis transform "
                   "g_a alone (default: --width); a narrower g_a compresses faster behind the same decoder")
    p.add_argument("--hyper-width", type=at_least(1), help="--arch gdn-hp: channels of the hyperprior h_a, h_s "
                   "(default: --width); h_s runs at compress and decompress")
    p.add_argument("--factor", type=int, choices=sorted({f for fs in RD_FACTORS.values() for f in fs}),
                   help="--arch gdn/gdn-hp/klt: down-sampling factor f of the latent (C·f²/ratio channels at "
                        "H/f; 1/4: 4, 8, 16; 1/9: 6, 12; default 16 and 12, klt 4 and 6). Small images want "
                        "a small f: a 28² image is 2×2 positions at f = 16, 7×7 at f = 4")
    p.add_argument("--res-blocks", type=at_least(0), help="--arch gdn/gdn-hp: residual units (3×3 conv, LeakyReLU, "
                   "3×3 conv, + x) after each GDN / IGDN; a deeper transform for the same latent [0]")
    p.add_argument("--blocks", type=at_least(0), default=m.blocks, help="extra conv blocks at latent resolution")
    p.add_argument("--upsample", choices=("pixelshuffle", "transpose"), default=m.upsample)
    p.add_argument("--latent-levels", type=int, default=m.latent_levels, help="quantisation levels (<=256)")
    p.add_argument("--quant", choices=("noise", "ste"), default=m.quant, help="training quantisation proxy")
    p.add_argument("--epochs", type=at_least(1), default=20, help="training epochs")
    p.add_argument("--time-budget", type=at_least(0.0, kind=float), default=0.0,
                   help="minutes of training for the whole run, a resumed run's earlier epochs included: it stops "
                   "after the epoch that crosses them (0: no limit)")
    p.add_argument("--stop-after", type=at_least(0), default=0, help="stop after this many epochs of this "
                   "invocation, checkpointed (0: no limit); --resume goes on with the same lr schedule")
    p.add_argument("--batch-size", type=at_least(1), default=32, help="images per step")
    p.add_argument("--lr", type=at_least(0.0, kind=float), default=1e-3, help="Adam learning rate (cosine schedule)")
    p.add_argument("--loss", default="mse", help="e.g. mse | l1:1,ms-ssim:0.5 | mse:1,perceptual:0.1")
    p.add_argument("--vgg-weights", help="local VGG16/VGG19 state_dict for the perceptual loss")
    p.add_argument("--perceptual", default="vgg19",
                   help="perceptual layers: vgg19 (relu2_2) | vgg16 (relu1_2=1,relu2_2=0.5,relu3_3=0.25) "
                        "| NET:LAYER=W,...")
    p.add_argument("--noise", default="", help="denoising training: gaussian:SIGMA or mask:FRACTION "
                   "(inputs corrupted, targets clean)")
    p.add_argument("--progressive", default="", help="progressive resizing: SIZE:EPOCHS[,SIZE:EPOCHS] "
                   "trained before the full --size, e.g. 14:3")
    p.add_argument("--rate-weight", type=at_least(0.0, kind=float), default=0.0,
                   help="lambda: add lambda x estimated latent bits per pixel to the loss (smaller files); "
                        "required by --arch gdn/klt, whose rate is the coded size under their learned prior")
    p.add_argument("--clip-grad", type=float, default=0.0,
                   help="clip the gradient's global norm to this (0: off; 1.0 lets gdn train at lr 5e-4)")
    p.add_argument("--size", type=int, default=d.size,
                   help="training image side (0: the smallest image's short side, at most 256: small images "
                        "train at their own size; printed)")
    p.add_argument("--resize", choices=RESIZE_POLICIES, default=d.resize, help="how images become --size squares")
    p.add_argument("--val-fraction", type=fraction, default=d.val_fraction,
                   help="held out of each class for validation (seeded; --val-data instead)")
    p.add_argument("--repeat", type=at_least(1), default=d.repeat, help="passes over the images per epoch")
    p.add_argument("--max-images", type=at_least(0), default=0, help="use at most N images (0: all)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"), help="torch device")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, weights and batches")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch per process (0: the usable cores divided among --nproc processes)")
    p.add_argument("--omp-wait", choices=("passive", "active"), default="passive",
                   help="OpenMP wait policy (OMP_WAIT_POLICY, set before torch loads unless the environment sets "
                        "it): passive threads sleep between parallel regions; active ones spin, which on shared "
                        "cores slowed training 5-19x at 2 threads (issue 17)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--init-from", metavar="CKPT",
                   help="start from the weights of another run's checkpoint (same architecture) with a "
                        "fresh optimiser and lr schedule: fine-tune on your domain, or train on")
    p.add_argument("--freeze-decoder", action="store_true", help="RD archs with --init-from: keep the loaded "
                   "decoder g_s fixed for the whole run (train a new g_a and entropy model behind it)")
    p.add_argument("--distill-from", metavar="CKPT", help="RD archs: a teacher checkpoint (same ratio); its "
                   "y = g_a(x) is a target for this run's g_a (knowledge distillation of the analysis transform)")
    p.add_argument("--distill-weight", type=at_least(0.0, kind=float), help="weight of mean((y - y_teacher)^2), "
                   "y in quantisation steps [0.01]")
    p.add_argument("--distill-epochs", type=at_least(0), help="epochs with the distillation term (0: all) [0]")
    p.add_argument("--grid-scale", type=float, default=1.0, help="RD archs: train the transform on each image "
                   "resampled by this factor (bicubic, as `aekit rescale` runs it; x̂ resampled back, loss and rate on "
                   "the image's own grid): export it, then `aekit rescale` it to the ratio that grid gives")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes (DDP: gloo on CPU, NCCL on GPUs); --batch-size is the global "
                        "batch, split evenly (see also torchrun in the README)")
    p.set_defaults(func=cmd_train)


def set_omp_wait_policy(policy: str) -> None:
    """OMP_WAIT_POLICY for torch's OpenMP threads; only takes effect before torch is imported, and an
    OMP_WAIT_POLICY already in the environment wins (say so when it differs)."""
    have = os.environ.get("OMP_WAIT_POLICY")
    if have is None:
        if "torch" in sys.modules:
            logging.getLogger(__name__).debug("torch already loaded: OMP_WAIT_POLICY=%s not applied", policy)
        os.environ["OMP_WAIT_POLICY"] = policy.upper()  # DDP children spawned later inherit it
    elif have.upper() != policy.upper():
        logging.getLogger(__name__).info("OMP_WAIT_POLICY=%s from the environment (not --omp-wait %s)", have, policy)


def cmd_train(args: argparse.Namespace) -> int:
    set_omp_wait_policy(args.omp_wait)  # before aekit.train imports torch
    import pathlib

    from aekit.config import ModelConfig
    from aekit.data import DataConfig
    from aekit.images import check_output_folder
    from aekit.train import TrainConfig, train

    check_output_folder(pathlib.Path(args.out), "--out")  # a file there fails now, not after the data are read
    arch = f"--arch {args.arch}"
    warm = f"{arch}{'' if args.init_from or args.resume else ', no --init-from'}"
    for opt, value, applies, where, this_run in (
            ("--freeze-epochs", args.freeze_epochs,
             args.arch == "pretrained" or (args.arch == "gdn-hp" and (args.init_from or args.resume)),
             "--arch pretrained, or --arch gdn-hp with --init-from (or resuming such a run)", warm),
            ("--lr-ratio", args.lr_ratio, args.arch == "pretrained", "--arch pretrained", arch),
            ("--kl-weight", args.kl_weight, args.arch == "vae", "--arch vae", arch),
            ("--encoder-width", args.encoder_width, args.arch in ("gdn", "gdn-hp"), "--arch gdn and gdn-hp", arch),
            ("--hyper-width", args.hyper_width, args.arch == "gdn-hp", "--arch gdn-hp", arch),
            ("--res-blocks", args.res_blocks, args.arch in ("gdn", "gdn-hp"), "--arch gdn and gdn-hp", arch),
            ("--factor", args.factor, args.arch in ("gdn", "gdn-hp", "klt"), "--arch gdn, gdn-hp or klt", arch),
            ("--freeze-decoder", args.freeze_decoder or None, args.arch in ("gdn", "gdn-hp", "klt")
             and bool(args.init_from or args.resume), "--arch gdn, gdn-hp or klt with --init-from", warm),
            ("--distill-from", args.distill_from, args.arch in ("gdn", "gdn-hp", "klt"), "--arch gdn, gdn-hp or klt",
             arch),
            ("--distill-weight", args.distill_weight, bool(args.distill_from), "--distill-from", "no --distill-from"),
            ("--distill-epochs", args.distill_epochs, bool(args.distill_from), "--distill-from", "no --distill-from")):
        if value is not None and not applies:  # an option that would do nothing is a mistake worth one line
            raise ValueError(f"{opt} applies to {where} only (this run: {this_run})")
    channels, size = folder_defaults(args.data, args.channels, args.size)
    mcfg = ModelConfig(arch=args.arch, channels=channels, ratio=args.ratio, width=args.width,
                       blocks=args.blocks, upsample=args.upsample, latent_levels=args.latent_levels,
                       quant=args.quant, backbone=args.backbone, encoder_width=args.encoder_width or 0,
                       hyper_width=args.hyper_width or 0, down_factor=args.factor or 0,
                       res_blocks=args.res_blocks or 0)
    dcfg = DataConfig(size=size, resize=args.resize, val_fraction=args.val_fraction,
                      max_images=args.max_images, repeat=args.repeat)
    tcfg = TrainConfig(data=args.data, out=args.out, val_data=args.val_data, epochs=args.epochs,
                       time_budget=args.time_budget, stop_after=args.stop_after, batch_size=args.batch_size, lr=args.lr,
                       loss=args.loss, vgg_weights=args.vgg_weights, rate_weight=args.rate_weight,
                       clip_grad=args.clip_grad,
                       perceptual=args.perceptual, noise=args.noise, progressive=args.progressive,
                       encoder_weights=args.encoder_weights,
                       **{k: getattr(args, k) for k in ("freeze_epochs", "lr_ratio", "kl_weight", "distill_weight",
                                                        "distill_epochs") if getattr(args, k) is not None},
                       freeze_decoder=args.freeze_decoder,
                       # resolved: a --resume from another folder, or naming it another way, is the same teacher
                       distill_from=str(pathlib.Path(args.distill_from).resolve()) if args.distill_from else None,
                       device=args.device,
                       amp=not args.no_amp, seed=args.seed, threads=args.threads, data_cfg=dcfg,
                       init_from=args.init_from, grid_scale=args.grid_scale)
    if args.nproc > 1:
        from aekit.distributed import launch

        summary = launch(args.nproc, tcfg, mcfg, resume=args.resume)
    else:
        summary = train(tcfg, mcfg, resume=args.resume)
    if not summary:  # another rank than 0 under torchrun: rank 0 reports
        return EXIT_OK
    print(f"trained {summary['epochs']} epochs in {summary['train_time_s']}s; "
          f"best val PSNR {summary['best_val_psnr']:.2f} dB; checkpoint {args.out}/best.pt")
    return EXIT_OK


def guess_channels(data: str) -> int:
    """Channels for a model of this folder: 1 if every image is grayscale, 3 if any is colour."""
    return folder_defaults(data, None, -1)[0]


def folder_defaults(data: str, channels: int | None, size: int) -> tuple[int, int]:
    """Channels and training side from every image header of the folder, each said in one line.

    Channels: 1 if every image is grayscale, 3 if any is colour (see FolderSummary);
    size 0 (auto): the smallest short side, at most 256. Given values are kept as they are.
    """
    from aekit.data import MAX_AUTO_SIZE, summarize
    from aekit.images import scan_folder

    if channels and size != 0:
        return channels, size
    samples, _, _ = scan_folder(data, report=lambda line: None)  # training reports skips itself
    info = summarize(samples)
    log = logging.getLogger(__name__)
    if not channels:
        channels = info.channels()
        log.info("data: %s (--channels to choose)", info.describe())
    if size == 0:
        size = info.auto_size()
        log.info("data: training side %d (%s; --size to choose)", size,
                 f"the smallest image side is {info.min_side}" + (f", capped at {MAX_AUTO_SIZE}"
                                                                   if info.min_side > MAX_AUTO_SIZE else ""))
    return channels, size


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="write real sample data sets to folders")
    dsub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    f = dsub.add_parser("fashion-mnist", help="Fashion-MNIST IDX files -> PNG class folders",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    f.add_argument("out", help="output folder (gets train/ and test/)")
    f.add_argument("--source", help="folder with the IDX files (default: Debian's dataset-fashion-mnist)")
    f.add_argument("--limit", type=int, default=0, help="first N images per split (0: all)")
    f.set_defaults(func=cmd_data)
    ph = dsub.add_parser("photos", help="the real-photo set: bundled photos + Debian's mate-backgrounds, "
                         "train/ and a fixed held-out test/ split",
                         description="Writes OUT/train and OUT/test (astronaut, coffee, LadyBird, Storm, "
                                     "GreenMeadow) as PNG; mate-backgrounds is read where installed, else "
                                     "unpacked with apt-get download + dpkg -x into ~/.cache/aekit.")
    ph.add_argument("out")
    ph.add_argument("--mate", help="folder of mate-backgrounds' nature/ photos (default: found or unpacked)")
    ph.add_argument("--more", action="store_true",
                    help="also the 12 photographs among KDE Plasma's wallpapers (Debian's plasma-workspace-wallpapers, "
                         "a 94 MB download when not installed), as train/plasma-*.png; test/ is unchanged")
    ph.add_argument("--plasma", help="with --more: Plasma's wallpapers/ folder (default: /usr/share/wallpapers, "
                                     "else unpacked into ~/.cache/aekit)")
    ph.set_defaults(func=cmd_data)
    s = dsub.add_parser("samples", help="photos bundled with scikit-image and scikit-learn")
    s.add_argument("out", help="output folder")
    s.set_defaults(func=cmd_data)


def cmd_data(args: argparse.Namespace) -> int:
    from aekit import datasets

    if args.dataset == "fashion-mnist":
        datasets.fashion_mnist(args.out, args.source, args.limit)
    elif args.dataset == "photos":
        try:
            datasets.photos(args.out, args.mate, more=args.more, plasma=args.plasma)
        except FileNotFoundError as e:
            print(f"aekit data photos: error: {e}", file=sys.stderr)
            return EXIT_ERROR
    else:
        datasets.sample_photos(args.out)
    return EXIT_OK


def add_generate_parsers(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("sample", help="generate new images from a VAE's prior into a grid PNG",
                       formatter_class=fmt)
    p.add_argument("model", help="checkpoint (.pt) or run folder of a model trained with --arch vae")
    p.add_argument("-n", type=int, default=64, help="number of images")
    p.add_argument("-o", "--out", required=True, help="output grid image (PNG)")
    p.add_argument("--size", type=int, help="image side (default: the training size)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("interpolate", help="decode the latent path between two images into a strip PNG",
                       formatter_class=fmt)
    p.add_argument("model", help="checkpoint (.pt) or run folder")
    p.add_argument("a", help="first image")
    p.add_argument("b", help="second image (same size as the first)")
    p.add_argument("--steps", type=int, default=8, help="decoded points from a to b")
    p.add_argument("-o", "--out", required=True, help="output strip image (PNG)")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from aekit import generate

    if args.command == "sample":
        out = generate.sample(args.model, args.n, args.out, args.size, args.seed)
    else:
        out = generate.interpolate(args.model, args.a, args.b, args.out, args.steps)
    print(out)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
