import sys, time
import torch
torch.set_num_threads(1)
from aekit.config import ModelConfig
from aekit.data import DataConfig
from aekit.train import TrainConfig, train
from aekit.export.onnx import export_model
for noise in sys.argv[1].split(","):
    name = "plain" if noise == "plain" else noise.replace(":", "")
    out = f"/tmp/det16/wood-work/{name}"
    t0 = time.time()
    mcfg = ModelConfig(channels=3, ratio=int(sys.argv[2]), width=32, blocks=1)
    tcfg = TrainConfig(data="/tmp/det16/wood/train", out=out + "/run", epochs=int(sys.argv[3]), batch_size=64, lr=2e-3,
                       noise="" if noise == "plain" else noise, seed=0, device="cpu", hist_images=512,
                       data_cfg=DataConfig(resize="none", val_fraction=0.05, workers=2))
    s = train(tcfg, mcfg)
    export_model(out + "/run/best.pt", out + "/model", force=True)
    print(name, round(time.time() - t0), s["best_val_psnr"], flush=True)
