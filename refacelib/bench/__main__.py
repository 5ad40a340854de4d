"""``python -m refacelib.bench <command>``: ``sizes`` writes ``bench/stage_sizes.json``
(:mod:`refacelib.bench.throughput`); ``registration`` measures cheaper ANTs settings on the
phantom and writes ``bench/results/registration-<profile>.csv`` (:mod:`refacelib.bench.registration`);
``costs`` times the per-subject stages at several cohort sizes and writes
``bench/results/costs-<profile>.csv`` (:mod:`refacelib.bench.costs`); ``settings`` measures DDIM steps x
samples against face MSD on the validation split and writes ``bench/results/settings-<profile>.csv``
(:mod:`refacelib.bench.settings`)."""
import importlib
import sys

#: Command -> the module whose ``main`` runs it (loaded on demand: ``sizes`` needs no ANTs).
COMMANDS = {"sizes": "throughput", "registration": "registration", "costs": "costs", "settings": "settings"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m refacelib.bench {{{','.join(COMMANDS)}}} [options]  (--help after a command)",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"refacelib.bench.{COMMANDS[argv[0]]}")
    # throughput's parser has the subcommand itself; registration's takes only the options
    return module.main(argv if argv[0] == "sizes" else argv[1:])


if __name__ == "__main__":
    sys.exit(main())
