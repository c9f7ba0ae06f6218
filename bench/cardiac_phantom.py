"""Synthetic cine-cardiac-like short-axis stacks: the ``cardiac`` task of bench/make_tasks.py.

Made to look like the hidden task rather than like isotropic data: 8-12 slices of 10 mm, 1.5 mm in-plane, about
220 x 250 voxels over a torso in which the heart fills a small part. Three structures (label values as in the ACDC
challenge's convention, Bernard et al., IEEE TMI 2018): 1 right ventricle (an irregular crescent wrapped around
the septum, ending above the apex), 2 myocardium (a ring around the left ventricle, closed at the apex, open
towards the outflow tract at the base), 3 left ventricle (the cavity with dark papillary muscles, a truncated
ellipsoid along the stack); half the cases at end-systole (small cavities, walls of 9-15 mm), half at end-diastole
(walls of 5-10 mm). bSSFP-like contrast: blood bright with flow inhomogeneity, myocardium, chest-wall muscles,
vertebra and liver dark-grey, lungs dark, fat bright (and around the heart by a random amount); unlabelled bright
confounders (the atria above the valve plane, ascending and descending aorta, pulmonary vessels); in-plane blur, a
motion ghost, a smooth bias field, Rician-like noise, a texture, a random contrast and gain per case, random heart
size, position, shape and rotation. Each thick slice averages five 2 mm sub-slices of its slab (partial volume at the base and apex); the
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
    """(RV, myocardium, LV, atria) masks of one sub-slice at ``z`` mm below the valve plane, in heart coordinates
    (u, v) mm; above the valve plane (z < 0) the unlabelled atria and outflow tracts (bright blood)."""
    empty = np.zeros(u.shape, bool)
    if z < 0:
        if z < -heart["atria"]:
            return empty, empty, empty, empty
        atria = ellipse(u, v, heart["lv_radius"] * 0.2, heart["lv_radius"] * 0.3, heart["lv_radius"] * 1.1,
                        heart["lv_radius"] * 0.9) | ellipse(u, v, -heart["rv_offset"], -heart["lv_radius"] * 0.4,
                                                            heart["lv_radius"] * 1.0, heart["lv_radius"] * 1.2)
        return empty, empty, empty, atria
    depth = z / heart["length"]  # 0 at the base, 1 at the apex
    if depth > 1.08:
        return empty, empty, empty, empty
    taper = math.sqrt(max(0.0, 1.0 - depth ** 2))
    radius = np.hypot(u, v)
    w = heart["wobble"]
    wobble = 1.0 + w[0] * np.cos(2 * angles + w[1]) + w[2] * np.cos(3 * angles + w[3]) + \
        w[4] * np.cos(5 * angles + w[5] + 3 * depth)
    cavity_r = heart["lv_radius"] * taper * wobble
    lv = radius <= cavity_r if depth <= 1.0 else empty
    wall = heart["wall"] * (1.0 + 0.3 * np.cos(angles - heart["thick_side"]))
    myo = (radius <= cavity_r + wall) & ~lv if depth <= 1.0 else radius <= 0.6 * heart["wall"]
    if depth < heart["outflow"]:  # the base: the ring opens towards the outflow tract (bright blood, LV)
        gap = np.abs(np.angle(np.exp(1j * (angles - heart["outflow_angle"])))) < 0.6 * (1 - depth / heart["outflow"])
        lv = lv | (myo & gap)
        myo = myo & ~gap
    rv_depth = heart["rv_length"]
    rv = empty
    if depth <= rv_depth:
        rv_taper = math.sqrt(max(0.0, 1.0 - (depth / rv_depth) ** 2))
        outer = ellipse(u, v, -heart["rv_offset"], heart["rv_shift"], heart["rv_width"] * rv_taper,
                        heart["rv_height"] * (0.5 + 0.5 * rv_taper))
        outer &= radius * (1 + 0.08 * np.cos(7 * angles + heart["rv_phase"])) > 0
        rv = outer & (radius > cavity_r + wall + heart["septum"])
    return rv, myo, lv, empty


def random_heart(rng) -> dict:
    systole = rng.random() < 0.5  # end-systole: small cavities, thick walls (as in ACDC's two phases)
    lv_radius = rng.uniform(10, 19) if systole else rng.uniform(18, 32)
    return {"lv_radius": lv_radius, "wall": rng.uniform(9, 15) if systole else rng.uniform(5, 10),
            "length": rng.uniform(55, 100), "atria": rng.uniform(10, 25), "outflow": rng.uniform(0.05, 0.25),
            "outflow_angle": rng.uniform(0, 2 * math.pi),
            "rv_length": rng.uniform(0.55, 0.9), "rv_offset": lv_radius * rng.uniform(0.7, 1.2),
            "rv_shift": lv_radius * rng.uniform(-0.4, 0.4), "rv_phase": rng.uniform(0, 2 * math.pi),
            "rv_width": lv_radius * rng.uniform(1.3, 2.2), "rv_height": lv_radius * rng.uniform(1.2, 2.2),
            "septum": rng.uniform(0.5, 3.0), "thick_side": rng.uniform(0, 2 * math.pi),
            "wobble": [rng.uniform(0, 0.15), rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.08),
                       rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.06), rng.uniform(0, 2 * math.pi)],
            "papillary": [(rng.uniform(0, 2 * math.pi), rng.uniform(2, 5)) for _ in range(2)],
            "rotation": rng.uniform(-0.8, 0.8) + math.pi * 0.15}


def torso(rng, x, y, centre, shape):
    """The case's fixed anatomy: {name: (mask, level name)} drawn in order, plus a texture field."""
    ny, nx = shape
    body = (rng.uniform(0.75, 0.95) * nx * INPLANE_MM / 2, rng.uniform(0.6, 0.85) * ny * INPLANE_MM / 2)
    inside = ellipse(x, y, 0, 0, body[0], body[1])
    fat_mm = rng.uniform(6, 16)
    parts = [("tissue", inside)]
    for side in (-1, 1):
        cy, cx = centre[0] + rng.uniform(-15, 15), centre[1] + side * rng.uniform(65, 95)
        parts.append(("lung", ellipse(x, y, cx, cy, rng.uniform(45, 80), rng.uniform(40, 60)) & inside))
    parts.append(("fat", inside & ~ellipse(x, y, 0, 0, body[0] - fat_mm, body[1] - fat_mm)))
    spine = (body[1] * rng.uniform(0.55, 0.75), rng.uniform(-15, 15))  # (y, x) mm: posterior
    parts.append(("myo", ellipse(x, y, spine[1], spine[0], 22, 18)))  # vertebra: muscle-grey, like myocardium
    parts.append(("fat", ellipse(x, y, spine[1], spine[0] - 5, 7, 6)))
    for _ in range(int(rng.integers(3, 7))):  # chest wall muscles and other grey structures
        angle = rng.uniform(0, 2 * math.pi)
        cx, cy = 0.8 * body[0] * math.cos(angle), 0.8 * body[1] * math.sin(angle)
        parts.append(("myo", ellipse(x, y, cx, cy, rng.uniform(10, 30), rng.uniform(6, 14))))
    vessels = [(spine[0] - 28, spine[1] + rng.uniform(10, 30), rng.uniform(9, 13)),  # descending aorta
               (centre[0] - rng.uniform(40, 60), centre[1] - rng.uniform(10, 40), rng.uniform(10, 15)),
               (centre[0] - rng.uniform(30, 60), centre[1] - rng.uniform(40, 70), rng.uniform(6, 10))]
    for cy, cx, r in vessels:
        parts.append(("blood", ellipse(x, y, cx, cy, r, r)))
        parts.append(("wall", ellipse(x, y, cx, cy, r + 2.5, r + 2.5) & ~ellipse(x, y, cx, cy, r, r)))
    return parts, inside


def case_arrays(rng):
    """(image [z, y, x] float32, label [z, y, x] uint8, spacing (x, y, z) mm) of one synthetic case."""
    slices = int(rng.integers(8, 13))
    ny, nx = int(rng.integers(200, 241)), int(rng.integers(230, 271))
    ys, xs = (np.arange(ny) - ny / 2) * INPLANE_MM, (np.arange(nx) - nx / 2) * INPLANE_MM
    y, x = np.meshgrid(ys, xs, indexing="ij")
    heart = random_heart(rng)
    centre = np.array([rng.uniform(-35, 20), rng.uniform(-20, 45)])  # (y, x) mm: anterior-left of the centre
    rot = heart["rotation"]
    u = math.cos(rot) * (x - centre[1]) + math.sin(rot) * (y - centre[0])
    v = -math.sin(rot) * (x - centre[1]) + math.cos(rot) * (y - centre[0])
    angles = np.arctan2(v, u)
    level = {"blood": rng.uniform(0.7, 1.0), "myo": rng.uniform(0.22, 0.38), "tissue": rng.uniform(0.28, 0.45),
             "fat": rng.uniform(0.55, 0.9), "lung": rng.uniform(0.02, 0.1), "liver": rng.uniform(0.25, 0.42),
             "wall": rng.uniform(0.25, 0.4)}
    parts, inside = torso(rng, x, y, centre, (ny, nx))
    first = -rng.uniform(0.3, 2.0) * SLICE_MM  # the valve plane relative to the first slab (atria above it)
    texture = smooth_noise(rng, (ny, nx), 2.0)
    blood_flow = smooth_noise(rng, (ny, nx), 6.0)  # inflow and flow voids: blood is not uniform
    epicardial = rng.uniform(0, 1)  # how much bright fat surrounds the heart
    image = np.zeros((slices, ny, nx), np.float32)
    label = np.zeros((slices, ny, nx), np.uint8)
    for k in range(slices):
        acc = np.zeros((ny, nx))
        for s in range(SUBSLICES):
            z_mm = k * SLICE_MM + (s + 0.5) * SLICE_MM / SUBSLICES
            depth_mm = z_mm - first
            rv, myo, lv, atria = heart_masks(u, v, depth_mm, heart, angles)
            slab = np.zeros((ny, nx))
            for name, mask in parts:
                slab[mask] = level[name]
            liver_level = depth_mm / heart["length"] - 0.5
            if liver_level > 0:
                slab[ellipse(x, y, centre[1] - 70, centre[0] + 40, 60 + 90 * liver_level, 45 + 70 * liver_level)
                     & inside] = level["liver"]
            if depth_mm > -heart["atria"] and depth_mm < heart["length"] * 1.1:
                sac = ellipse(u, v, -heart["rv_offset"] * 0.4, 0, heart["lv_radius"] * 2.6 + 12,
                              heart["lv_radius"] * 2.2 + 12)
                slab[sac] = level["fat"] * epicardial + level["tissue"] * (1 - epicardial)
            slab[myo] = level["myo"]
            blood = (lv | rv | atria) & ~myo
            slab[blood] = level["blood"] * (1 + 0.12 * blood_flow[blood])
            if 0.2 < depth_mm / heart["length"] < 0.8:  # papillary muscles: dark, inside the LV (labelled LV)
                for angle, size in heart["papillary"]:
                    r = heart["lv_radius"] * 0.6
                    pap = ellipse(u, v, r * math.cos(angle), r * math.sin(angle), size, size) & lv
                    slab[pap] = level["myo"]
            acc += slab
            if s == SUBSLICES // 2:
                label[k][rv], label[k][myo], label[k][lv] = 1, 2, 3
        image[k] = acc / SUBSLICES
    image = blur_and_ghost(rng, image)
    bias = np.exp(rng.uniform(0.2, 0.45) * smooth_noise(rng, (ny, nx), 45.0))
    image = image * (1.0 + 0.08 * texture) * bias
    sigma = rng.uniform(0.03, 0.09)
    noisy = np.hypot(image + sigma * rng.standard_normal(image.shape), sigma * rng.standard_normal(image.shape))
    gain = rng.uniform(200, 1500)
    return (noisy * gain).astype(np.float32), label, (INPLANE_MM, INPLANE_MM, SLICE_MM)


def blur_and_ghost(rng, image):
    """In-plane blur (the acquisition's point spread) and a faint ghost along the phase-encoding axis (breathing
    and cardiac motion), per case."""
    fy = np.fft.fftfreq(image.shape[-2])[:, None]
    fx = np.fft.fftfreq(image.shape[-1])[None, :]
    width = rng.uniform(0.6, 1.4)
    kernel = np.exp(-2 * (math.pi * width) ** 2 * (fx ** 2 + fy ** 2))
    blurred = np.real(np.fft.ifft2(np.fft.fft2(image) * kernel))
    shift = int(rng.integers(image.shape[-2] // 5, image.shape[-2] // 2))
    return blurred + rng.uniform(0.0, 0.12) * np.roll(blurred, shift, axis=-2)


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
