"""Released checkpoints in (ViT .npz, TimeSformer .pyth, HuggingFace, our own Orbax), HF out.

  files.py              safe reading (no unpickling) and format detection
  vit_npz.py            google-research/vision_transformer and big_vision .npz
  timesformer_torch.py  official facebookresearch/TimeSformer state dicts (.pyth, or .npz)
  huggingface.py        transformers' TimeSformer (safetensors / pytorch_model.bin + config.json)
  hf_export.py          one head of ours out as a transformers model directory (export)
  orbax_init.py         our own checkpoints (a run's workdir or a `convert` output)
  weights.py            the common converted form (our parameter paths and layouts)
  resize.py             position / time embedding resizing
  fit.py                fitting converted weights to a model; mismatch errors
  loader.py             the entry points: read_pretrained, load_pretrained,
                        init_state_from_pretrained (the trainer's init_from hook)
"""
