"""Synthetic cine-cardiac-like short-axis stacks: the ``cardiac`` task of bench/make_tasks.py.

Made to look like the hidden task rather than like isotropic data: 8-12 slices of 10 mm, 1.5 mm in-plane, about
220 x 250 voxels over a torso in which the heart fills a small part. Three structures (label values as in the ACDC
challenge's convention, Bernard et al., IEEE TMI 2018): 1 right ventricle (a crescent wrapped around the septum,
ending above the apex), 2 myocardium (a ring of 5-11 mm around the left ventricle, closed at the apex), 3 left
ventricle (the cavity, a truncated ellipsoid along the stack). bSSFP-like contrast: blood bright, myocardium and
liver dark-grey, lungs dark, fat bright; bright confounders (aorta, descending aorta, pulmonary vessels); a smooth
bias field, Rician-like noise, a texture, a random contrast and gain per case, random heart size, position, shape
and rotation. Each thick slice averages five 2 mm sub-slices of its slab (partial volume at the base and apex); the
labels are those of the slab's centre.

Example::

    python bench/make_tasks.py --tasks cardiac --out bench/results/tasks
"""

from __future__ import annotations

import math

import numpy as np

CASES = 50
SLICE_MM = 10.0
INPLANE_MM = 1.5
SUBSLICES = 5  # sub-slices averaged per thick slice
LABELS = {1: "RV", 2: "Myocardium", 3: "LV"}


def smooth_noise(rng, shape, scale_px: float) -> np.ndarray:
    """Zero-mean, unit-variance noise smoothed in-plane with a Gaussian of ``scale_px`` (FFT filter)."""
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[-2])[:, None]
    fx = np.fft.fftfreq(shape[-1])[None, :]
    kernel = np.exp(-2 * (math.pi * scale_px) ** 2 * (fx ** 2 + fy ** 2))
    smooth = np.real(np.fft.ifft2(np.fft.fft2(white) * kernel))
    return smooth / (smooth.std() + 1e-8)


def ellipse(u, v, cu, cv, ru, rv) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def heart_masks(u, v, z, heart, angles):
    """(RV, myocardium, LV) masks of one sub-slice at ``z`` mm from the base, in heart coordinates (u, v) mm."""
    depth = z / heart["length"]  # 0 at the base, 1 at the apex
    if depth < 0 or depth > 1.08:
        empty = np.zeros(u.shape, bool)
        return empty, empty, empty
    taper = math.sqrt(max(0.0, 1.0 - depth ** 2))
    radius = np.hypot(u, v)
    wobble = 1.0 + heart["wobble"][0] * np.cos(2 * angles + heart["wobble"][1]) + \
        heart["wobble"][2] * np.cos(3 * angles + heart["wobble"][3])
    cavity_r = heart["lv_radius"] * taper * wobble
    lv = radius <= cavity_r if depth <= 1.0 else np.zeros(u.shape, bool)
    wall = heart["wall"] * (1.0 + 0.25 * np.cos(angles - heart["thick_side"]))
    myo = (radius <= cavity_r + wall) & ~lv if depth <= 1.0 else radius <= 0.6 * heart["wall"]
    rv_depth = heart["rv_length"]
    rv = np.zeros(u.shape, bool)
    if depth <= rv_depth:
        rv_taper = math.sqrt(max(0.0, 1.0 - (depth / rv_depth) ** 2))
        outer = ellipse(u, v, -heart["rv_offset"], 0.0, heart["rv_width"] * rv_taper,
                        heart["rv_height"] * (0.5 + 0.5 * rv_taper))
        rv = outer & (radius > heart["lv_radius"] * taper * wobble + wall + heart["septum"])
    return rv, myo, lv


def random_heart(rng) -> dict:
    lv_radius = rng.uniform(17, 30)
    return {"lv_radius": lv_radius, "wall": rng.uniform(5, 11), "length": rng.uniform(60, 95),
            "rv_length": rng.uniform(0.6, 0.9), "rv_offset": lv_radius * rng.uniform(0.7, 1.1),
            "rv_width": lv_radius * rng.uniform(1.6, 2.1), "rv_height": lv_radius * rng.uniform(1.4, 2.0),
            "septum": rng.uniform(1.0, 3.0), "thick_side": rng.uniform(0, 2 * math.pi),
            "wobble": [rng.uniform(0, 0.12), rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.06),
                       rng.uniform(0, 2 * math.pi)],
            "rotation": rng.uniform(-0.5, 0.5) + math.pi * 0.15}


def case_arrays(rng):
    """(image [z, y, x] float32, label [z, y, x] uint8, spacing (x, y, z) mm) of one synthetic case."""
    slices = int(rng.integers(8, 13))
    ny, nx = int(rng.integers(200, 241)), int(rng.integers(230, 271))
    ys, xs = (np.arange(ny) - ny / 2) * INPLANE_MM, (np.arange(nx) - nx / 2) * INPLANE_MM
    y, x = np.meshgrid(ys, xs, indexing="ij")
    heart = random_heart(rng)
    centre = np.array([rng.uniform(-25, 15), rng.uniform(-10, 35)])  # (y, x) mm: anterior-left of the centre
    rot = heart["rotation"]
    u = math.cos(rot) * (x - centre[1]) + math.sin(rot) * (y - centre[0])
    v = -math.sin(rot) * (x - centre[1]) + math.cos(rot) * (y - centre[0])
    angles = np.arctan2(v, u)
    body = (rng.uniform(0.8, 0.95) * nx * INPLANE_MM / 2, rng.uniform(0.65, 0.85) * ny * INPLANE_MM / 2)
    contrast = {"blood": rng.uniform(0.85, 1.0), "myo": rng.uniform(0.2, 0.35), "tissue": rng.uniform(0.3, 0.45),
                "fat": rng.uniform(0.6, 0.85), "lung": rng.uniform(0.02, 0.08), "liver": rng.uniform(0.25, 0.4)}
    first = -rng.uniform(0, 1.5) * SLICE_MM  # base of the heart relative to the first slab (may start above it)
    vessels = [(centre[0] - rng.uniform(35, 55), centre[1] + rng.uniform(-45, -20), rng.uniform(9, 14)),
               (centre[0] + rng.uniform(40, 60), centre[1] + rng.uniform(-60, -30), rng.uniform(8, 12)),
               (centre[0] - rng.uniform(10, 30), centre[1] - rng.uniform(50, 80), rng.uniform(4, 8))]
    texture = smooth_noise(rng, (ny, nx), 2.0)
    fat_mm = rng.uniform(8, 14)
    lungs = [(centre[0] + rng.uniform(-10, 10), centre[1] + s * rng.uniform(70, 95), rng.uniform(45, 60),
              rng.uniform(55, 80)) for s in (-1, 1)]
    image = np.zeros((slices, ny, nx), np.float32)
    label = np.zeros((slices, ny, nx), np.uint8)
    for k in range(slices):
        acc = np.zeros((ny, nx))
        for s in range(SUBSLICES):
            z_mm = k * SLICE_MM + (s + 0.5) * SLICE_MM / SUBSLICES
            depth_mm = z_mm - first
            rv, myo, lv = heart_masks(u, v, depth_mm, heart, angles)
            slab = np.full((ny, nx), 0.0)
            inside = ellipse(x, y, 0, 0, body[0], body[1])
            fat = inside & ~ellipse(x, y, 0, 0, body[0] - fat_mm, body[1] - fat_mm)
            slab[inside] = contrast["tissue"]
            for cy, cx, ry, rx in lungs:
                slab[ellipse(x, y, cx, cy, rx, ry) & inside] = contrast["lung"]
            liver_level = (z_mm - first) / max(heart["length"], 1) - 0.55
            if liver_level > 0:
                slab[ellipse(x, y, centre[1] - 60, centre[0] + 30, 60 + 80 * liver_level,
                             45 + 60 * liver_level) & inside] = contrast["liver"]
            slab[fat] = contrast["fat"]
            for cy, cx, r in vessels:
                slab[ellipse(x, y, cx, cy, r, r)] = contrast["blood"]
            pericardium = ellipse(u, v, -heart["rv_offset"] * 0.4, 0, heart["lv_radius"] * 2.6,
                                  heart["lv_radius"] * 2.3) & (myo | rv | lv).any()
            slab[pericardium & ~(myo | rv | lv)] = contrast["tissue"] * 1.1
            slab[myo] = contrast["myo"]
            slab[lv | rv] = contrast["blood"]
            acc += slab
            if s == SUBSLICES // 2:
                label[k][rv], label[k][myo], label[k][lv] = 1, 2, 3
        image[k] = acc / SUBSLICES
    bias = np.exp(0.25 * smooth_noise(rng, (ny, nx), 40.0))
    image = image * (1.0 + 0.06 * texture) * bias
    sigma = rng.uniform(0.03, 0.07)
    noisy = np.hypot(image + sigma * rng.standard_normal(image.shape), sigma * rng.standard_normal(image.shape))
    gain = rng.uniform(200, 1500)
    return (noisy * gain).astype(np.float32), label, (INPLANE_MM, INPLANE_MM, SLICE_MM)


def make_cardiac(write_dataset, seed: int = 0, cases: int = CASES):
    """The maker of the ``cardiac`` task folder for bench/make_tasks.py (``write_dataset`` writes the folder)."""
    import SimpleITK as sitk

    def make(folder):
        rng = np.random.default_rng([seed, 2021])
        written = []
        for index in range(cases):
            image, label, spacing = case_arrays(rng)
            direction = rotated_direction(rng)
            items = []
            for array in (image, label):
                item = sitk.GetImageFromArray(array)
                item.SetSpacing(spacing)
                item.SetDirection(direction)
                item.SetOrigin(tuple(float(o) for o in rng.uniform(-200, -100, 3)) if not items
                               else items[0].GetOrigin())
                items.append(item)
            written.append((f"cardiac_{index:03d}", items[0], items[1]))
        description = ("Synthetic cine-cardiac-like short-axis stacks (bench/cardiac_phantom.py): 8-12 slices of "
                       "10 mm, 1.5 mm in-plane, ~220 x 250 voxels; right ventricle, myocardium (a thin ring), left "
                       "ventricle. Not patient data: a benchmark shaped like the hidden task.")
        write_dataset(folder, "SyntheticCineCardiac", description, "MRI", LABELS, written,
                      {"reference": "synthetic", "licence": "CC0-1.0", "source": "bench/cardiac_phantom.py",
                       "spacing_mm": [INPLANE_MM, INPLANE_MM, SLICE_MM], "seed": seed})
    return make


def rotated_direction(rng):
    """A direction matrix slightly off the scanner axes (short-axis stacks are oblique)."""
    a, b = rng.uniform(-0.3, 0.3, 2)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return tuple(float(v) for v in (rz @ rx).ravel())
