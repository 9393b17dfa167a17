"""Training augmentation beyond crops and flips: RandAugment per image in the input pipeline; random erasing and
Mixup/CutMix on whole batches inside the compiled step (where the other examples of the batch are)."""
