"""AnomalyVFM (``--method vfm``): :mod:`.method` (scoring), :mod:`.dora` (adapters), :mod:`.decoder` (decoder, head
and map), :mod:`.adapter` (the adapter folder), :mod:`.official` (importing the released checkpoints),
:mod:`.train` (``zsad train-vfm``)."""
