"""Write an nnssl-format checkpoint (the layout `sslseg pretrain` writes and `load_backbone` reads) of a freshly
initialised network: the stand-in backbone of the time-to-Dice benchmark, since no pretrained CPU-size backbone
can be downloaded here. It exercises the fine-tuning recipe (frozen-encoder warm-up, whole-network warm-up, PolyLR)
but carries no pretraining benefit.

    python bench/make_test_backbone.py --arch ResEncXS-cpu --out /tmp/bb/checkpoint_final.pth
"""

import argparse
import json
import os

import torch

from sslseg.networks import build_from_spec
from sslseg.networks import spec_for


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ResEncXS-cpu")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    spec = spec_for(args.arch)
    network = build_from_spec(spec, 1, 2)
    plan = {"architecture_plans": {"arch_class_name": args.arch, "arch_kwargs": spec["config"]},
            "pretrain_plan": {"spacing": [1.0, 1.0, 1.0], "normalization": "zscore", "patch_size": [64, 64, 64],
                              "method": "none (random initialisation)"},
            "pretrain_num_input_channels": 1, "recommended_downstream_patchsize": [64, 64, 64],
            "key_to_encoder": "encoder.stages", "key_to_stem": "encoder.stem",
            "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"]}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save({"network_weights": network.state_dict(), "nnssl_adaptation_plan": plan,
                "trainer_name": "RandomInit", "init_args": {}}, args.out)
    with open(os.path.join(os.path.dirname(os.path.abspath(args.out)), "adaptation_plan.json"), "w") as stream:
        json.dump(plan, stream, indent=1)
    print(args.out)


if __name__ == "__main__":
    main()
