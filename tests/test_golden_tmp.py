import json, torch
from helpers import train
from helpers.cache import load_dataset
from helpers.model import build_model
def test_print(tiny_isic, tmp_path):
    splits = (load_dataset(tiny_isic, "train", 32, progress=False), load_dataset(tiny_isic, "test", 32, progress=False))
    out = {}
    for freeze in (True, False):
        torch.manual_seed(3)
        m = build_model(freeze, encoder_weights=None)
        h = train.fit(m, *splits, epochs=2, batch_size=4, seed=3, device="cpu", out_dir=tmp_path / str(freeze), progress=False, log=None)
        out[str(freeze)] = [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    print("GOLDEN", json.dumps(out))
