"""Draw validation Dice against wall time from the JSON lines of finetune_time_to_dice.py / cpu_target.py, with each
run's final Dice on the test cases as a marker at the end (runs without a history, such as the plain MONAI script,
show only that marker).

    python bench/plot_time_to_dice.py docs/results/cpu_target_sequential.jsonl docs/results/finetune_s3d_backbone.jsonl \
        --out docs/time_to_dice_cpu.png
"""

import argparse
import json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="JSON-lines files")
    parser.add_argument("--out", required=True, help="PNG file")
    parser.add_argument("--title", default="Hippocampus, 10 training cases, 2 CPU cores")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    records = [json.loads(line) for path in args.results for line in open(path, encoding="utf-8") if line.strip()]
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    for index, record in enumerate(records):
        color = f"C{index}"
        label = record.get("label") or record.get("backbone") or f"run {index + 1}"
        history = record.get("history") or []
        if history:
            seconds, dice = zip(*history)
            axes.plot([s / 60 for s in seconds], dice, "-o", color=color, markersize=3,
                      label=f"{label}: validation Dice (5 cases)")
        test = record["test_dice"]["mean"]
        minutes = record.get("finetune_seconds", history[-1][0] if history else 0) / 60
        axes.plot([minutes], [test], "*", color=color, markersize=13,
                  label=f"{label}: test Dice {test:.3f} ({record['test_dice']['cases']} unseen cases)")
    axes.axhline(0.85, color="grey", linestyle=":", linewidth=1)
    axes.text(0.2, 0.853, "target 0.85", color="grey", fontsize=8)
    axes.set_xlabel("fine-tuning wall time (minutes)")
    axes.set_ylabel("mean Dice (Anterior, Posterior)")
    axes.set_ylim(0.5, 0.9)
    axes.set_title(args.title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
