"""Wood texture set from Debian mate-backgrounds' Wood.jpg: downscaled 1/2 (1280x960), 32x32 RGB tiles.
The 40x30 grid of 32-px cells is split at random (seed 0): 60% train, 20% cal, 20% test cells, so all
three sets cover the whole photo (its focus and perspective vary across it). Cal and test are the
cells themselves; train is every 32x32 window at stride 8 lying wholly inside train cells."""
import shutil
from pathlib import Path
import numpy as np
from PIL import Image
im = Image.open("/tmp/mate/x/usr/share/backgrounds/mate/nature/Wood.jpg").convert("RGB")
a = np.asarray(im.resize((1280, 960), Image.LANCZOS))
out = Path("/tmp/det16/wood"); shutil.rmtree(out, ignore_errors=True)
cells = [(r, c) for r in range(30) for c in range(40)]
o = np.random.default_rng(0).permutation(len(cells))
part = {}
for k, i in enumerate(o):
    part[cells[i]] = "train" if k < 720 else "cal" if k < 960 else "test"
mask = np.zeros((960, 1280), bool)
for (r, c), p in part.items():
    if p == "train":
        mask[r*32:(r+1)*32, c*32:(c+1)*32] = True
    else:
        d = out / p; d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a[r*32:(r+1)*32, c*32:(c+1)*32]).save(d / f"{r:02d}_{c:02d}.png")
d = out / "train"; d.mkdir(parents=True, exist_ok=True); n = 0
for y in range(0, 960 - 31, 8):
    for x in range(0, 1280 - 31, 8):
        if mask[y:y+32, x:x+32].all():
            Image.fromarray(a[y:y+32, x:x+32]).save(d / f"{y:03d}_{x:03d}.png"); n += 1
print({p: len(list((out / p).iterdir())) for p in ("train", "cal", "test")})
