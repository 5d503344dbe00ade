# The compiled extension: importing it registers the ops with the PyTorch dispatcher; they are
# reached through torch.ops.fewcore (fewcore/ops), so the module itself exposes nothing.
