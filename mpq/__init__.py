"""The science of TAP-MPQ: data, models, quantizer, features, ground truth,
allocation, fitness and baseline proxies. Pure torch / torchvision / numpy /
scipy, so it runs unchanged on the GPU machine's image and in the sandbox worker.
"""
