"""Do two source trees train the same weights on the CPU? Short fixed-seed runs (a fine-tune from scratch with
validation choosing the weights, S3D and Volume Fusion pretraining), then every tensor compared.

    SSLSEG_THREADS=1 PYTHONPATH=/tmp/before python bench/cpu_bit_identity.py run /tmp/bit_before
    SSLSEG_THREADS=1 PYTHONPATH=. python bench/cpu_bit_identity.py run /tmp/bit_after
    python bench/cpu_bit_identity.py compare /tmp/bit_before /tmp/bit_after
"""

import argparse
import os
import sys

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared",
                            "data", "Task04_Hippocampus")
OUTPUTS = ("ft/model.pt", "s3d/checkpoint_final.pth", "s3d/checkpoint_latest.pth", "volf/checkpoint_final.pth")


def run(out: str, data: str):
    import sslseg
    from sslseg.finetuning import finetune

    names = sorted(os.listdir(os.path.join(data, "imagesTr")))[:22]  # 22 cases: 1 in 5 held out for validation
    images = [os.path.join(data, "imagesTr", n) for n in names]
    labels = [os.path.join(data, "labelsTr", n) for n in names]
    finetune("none", images=images, labels=labels, label_names={1: "Anterior", 2: "Posterior"},
             out=os.path.join(out, "ft"), preset="test", device="cpu", steps=12, progress="none")
    listing = os.path.join(out, "images.txt")
    with open(listing, "w", encoding="utf-8") as stream:
        stream.writelines(p + "\n" for p in images[:3])
    for method in ("s3d", "volf"):
        sslseg.pretrain(method, images=listing, out=os.path.join(out, method), arch="ResEncT-test", steps=6, batch=2,
                        patch=16, device="cpu", seed=1, val_every=3, save_every=3, progress="none")


def tensors(path: str) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("network_weights", "model", "network"):
        if isinstance(state, dict) and key in state:
            state = state[key]
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def compare(first: str, second: str) -> bool:
    import torch

    same = True
    print("| output | tensors | identical |\n| --- | --- | --- |")
    for name in OUTPUTS:
        a, b = tensors(os.path.join(first, name)), tensors(os.path.join(second, name))
        equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        same &= equal
        print(f"| {name} | {len(a)} | {'yes' if equal else 'NO'} |")
    print("command: python " + " ".join(sys.argv))
    return same


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("run", "compare"))
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--data", default=DEFAULT_DATA, help="the hippocampus folder (MSD Task04 layout)")
    args = parser.parse_args(argv)
    if args.action == "run":
        run(args.folders[0], args.data)
    else:
        sys.exit(0 if compare(*args.folders[:2]) else 1)


if __name__ == "__main__":
    main()
