"""How far perfect semantics get you in panoptic terms, measured on the built-in `shapes` data.

    python -m experiments.shapes_pq_from_semantics [--split validation] [--num 200]

The prediction is the ground-truth semantic map itself (mIoU 100% by construction), with thing
instances taken as its connected components, the simplest way to make instances from a semantic
model. Panoptic Quality then shows what the design text describes: touching objects of one class
merge into one component (a false negative, an over-merge) and an object cut in two by an
occluder becomes two components (a false positive, an over-split); semantic IoU sees neither.
Prints a Markdown table per class and the merge/split counts for 4- and 8-connectivity.
"""

import argparse

import numpy as np
from scipy import ndimage

from seg_jax import metrics
from seg_jax.data import shapes
from seg_jax.data import shapes_render as sr

_STRUCTURES = {
    4: ndimage.generate_binary_structure(2, 1),
    8: ndimage.generate_binary_structure(2, 2),
}


def components_as_instances(semantic, things, connectivity):
    """Instance ids [H, W]: the connected components of each thing class, numbered from 1."""
    instance = np.zeros(semantic.shape, np.int32)
    for cls in things:
        labelled, _ = ndimage.label(semantic == cls, structure=_STRUCTURES[connectivity])
        instance = np.where(labelled > 0, labelled, instance)
    return instance


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="validation")
    parser.add_argument("--num", type=int, default=200)
    args = parser.parse_args()

    examples = [shapes.render_split_example(args.split, i) for i in range(args.num)]
    semantic = np.stack([e["semantic"] for e in examples]).astype(np.int32)
    instance = np.stack([e["instance"] for e in examples]).astype(np.int32)
    things, stuff = sr.THING_CLASSES, sr.STUFF_CLASSES
    cm = np.asarray(metrics.confusion_matrix(semantic, semantic, sr.NUM_CLASSES), np.int64)

    print(f"`shapes` {args.split}, {args.num} images; prediction = true semantics "
          f"(mIoU {100 * metrics.mean_iou(cm):.1f}%) + connected components as instances\n")
    print("| connectivity | PQ | SQ | RQ | PQ things | TP | FP | FN | over-merge | over-split |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    per_class = {}
    for connectivity in (4, 8):
        predicted = np.stack([components_as_instances(s, things, connectivity) for s in semantic])
        result = metrics.panoptic_quality(semantic, predicted, semantic, instance, things=things,
                                          stuff=stuff, class_names=sr.CLASS_NAMES)
        a = result["all"]
        print(f"| {connectivity} | {100 * a['pq']:.1f} | {100 * a['sq']:.1f} | {100 * a['rq']:.1f} | "
              f"{100 * result['things']['pq']:.1f} | {result['tp']} | {result['fp']} | "
              f"{result['fn']} | {result['over_merge']} | {result['over_split']} |")
        per_class[connectivity] = result["per_class"]

    print("\nPer class, 8-connectivity:\n")
    print("| class | PQ | SQ | RQ | TP | FP | FN | over-merge | over-split |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in per_class[8].items():
        print(f"| {name} | {100 * r['pq']:.1f} | {100 * r['sq']:.1f} | {100 * r['rq']:.1f} | "
              f"{r['tp']} | {r['fp']} | {r['fn']} | {r['over_merge']} | {r['over_split']} |")


if __name__ == "__main__":
    main()
