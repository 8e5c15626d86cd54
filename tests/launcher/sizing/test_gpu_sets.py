import pytest

from launcher.errors import GpuSetError, InvalidInput
from launcher.sizing.gpu_sets import GpuSet, split_gpu_sets


def test_one_gpu_per_replica_by_default() -> None:
    sets = split_gpu_sets(["0", "1"], tensor_parallel=1)
    assert sets == [GpuSet(("0",)), GpuSet(("1",))]
    assert [s.name for s in sets] == ["0", "1"]


def test_consecutive_sets_keep_the_given_order() -> None:
    sets = split_gpu_sets(["3", "2", "1", "0"], tensor_parallel=2)
    assert [s.ids for s in sets] == [("3", "2"), ("1", "0")]
    assert [s.name for s in sets] == ["3-2", "1-0"]
    assert sets[0].cuda_visible_devices == "3,2"
    assert sets[0].size == 2


@pytest.mark.parametrize(
    ("ids", "tp", "message"),
    [
        (["0", "1", "2"], 2, "3 GPUs cannot be split into sets of 2"),
        (["0", "0"], 1, "GPU id listed twice: 0"),
        ([], 1, "no GPU ids given"),
        (["0", "x"], 1, "got x"),
        (["0"], 0, "at least 1"),
    ],
)
def test_bad_sets_are_one_line_input_errors(ids: list[str], tp: int, message: str) -> None:
    with pytest.raises(GpuSetError, match=message) as caught:
        split_gpu_sets(ids, tensor_parallel=tp)
    assert isinstance(caught.value, InvalidInput)
    assert "\n" not in str(caught.value)
