"""convert/run_identity.py: what makes two runs the same run for a resume."""

from convert.distill_config import DistillConfig
from convert.run_identity import describe_difference, run_identity


def _identity(**stage2):
    stages = [DistillConfig(stage=1, steps=4).resolved(), DistillConfig(stage=2, steps=4, **stage2).resolved()]
    return run_identity(stages, seq_len=128, data_fingerprint="d")


def test_a_field_added_after_the_checkpoint_counts_only_off_its_default():
    """A checkpoint written before a DistillConfig field existed (here kl_focus) resumes where this run holds the
    field at its default, which is what the older version did; at another value it is another run, named."""
    saved = _identity()
    del saved["stage2"]["kl_focus"], saved["stage1"]["kl_focus"]
    assert describe_difference(saved, _identity()) == ""
    assert describe_difference(saved, _identity(kl_focus=2.0)) == "stage2.kl_focus (absent) -> 2.0"
    # any other change is still named, and a field the checkpoint holds is compared as before
    assert describe_difference(saved, _identity(lr=1e-4)) == "stage2.lr 0.001 -> 0.0001"
    assert describe_difference(_identity(), _identity(kl_focus=1.0)) == "stage2.kl_focus 0.0 -> 1.0"
    # a field whose saved value is absent but is not a stage's DistillConfig field is a difference
    del saved["seq_len"]
    assert describe_difference(saved, _identity()) == "seq_len (absent) -> 128"
