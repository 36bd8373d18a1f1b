"""Device groups for members and replicas (alexnet/training/placement.py): pure functions, no devices needed."""

from __future__ import annotations

import pytest

from alexnet.training.placement import (
    check_replicas_fit,
    device_groups,
    local_devices_from_ray,
    member_groups,
    ray_member_resources,
    replica_devices,
)

EIGHT_GPUS = [f"cuda:{i}" for i in range(8)]


def test_eight_gpus_two_per_member_give_four_disjoint_groups_in_order():
    groups = device_groups(EIGHT_GPUS, 2)
    assert groups == [("cuda:0", "cuda:1"), ("cuda:2", "cuda:3"), ("cuda:4", "cuda:5"), ("cuda:6", "cuda:7")]
    used = [d for g in groups for d in g]
    assert len(used) == len(set(used))


def test_leftover_devices_stay_idle():
    assert device_groups(EIGHT_GPUS[:7], 2) == [("cuda:0", "cuda:1"), ("cuda:2", "cuda:3"), ("cuda:4", "cuda:5")]


def test_a_pool_too_small_for_one_group_names_the_key_and_the_counts():
    with pytest.raises(ValueError, match=r"^ensemble\.devices: 1 device\(s\) .* cannot give one group of 2") as err:
        device_groups(["cuda:0"], 2)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("pool", [["cuda:0", "cuda:1", "cuda:0", "cuda:2"], ["cuda", "cuda:0"]])
def test_a_gpu_listed_twice_is_refused(pool):
    with pytest.raises(ValueError, match=r"ensemble\.devices: .* listed twice"):
        device_groups(pool, 2)


def test_cpu_slots_may_repeat():
    assert device_groups(["cpu", "cpu"], 2) == [("cpu", "cpu")]
    assert device_groups(["cpu"] * 4, 2) == [("cpu", "cpu"), ("cpu", "cpu")]


def test_unknown_device_names_are_refused():
    with pytest.raises(ValueError, match=r"ensemble\.devices: unknown device 'gpu0'"):
        device_groups(["gpu0", "cuda:1"], 1)


def test_members_times_replicas_share_the_pool():
    # R replicas of D devices: a member takes R*D devices, the pool gives floor(P / (R*D)) at once.
    assert member_groups(EIGHT_GPUS, replicas=1, devices_per_replica=2) == device_groups(EIGHT_GPUS, 2)
    assert member_groups(EIGHT_GPUS, replicas=2, devices_per_replica=2) == [
        ("cuda:0", "cuda:1", "cuda:2", "cuda:3"),
        ("cuda:4", "cuda:5", "cuda:6", "cuda:7"),
    ]
    assert len(member_groups(EIGHT_GPUS, replicas=4, devices_per_replica=1)) == 2
    assert len(member_groups(EIGHT_GPUS, replicas=1, devices_per_replica=2, concurrency=3)) == 3


def test_a_member_larger_than_the_pool_names_replicas():
    with pytest.raises(ValueError, match=r"ensemble\.devices: 4 device\(s\) cannot hold one member: train\.replicas=3"):
        member_groups(EIGHT_GPUS[:4], replicas=3, devices_per_replica=2)


def test_rank_r_gets_gpus_2r_and_2r_plus_1():
    for local_rank in range(4):
        devices = replica_devices(2, rank=local_rank, local_rank=local_rank, replicas=4, visible_devices=8)
        assert devices == (f"cuda:{2 * local_rank}", f"cuda:{2 * local_rank + 1}")
    # On a second node, global rank 5 is local rank 1: the devices follow the local rank.
    assert replica_devices(2, rank=5, local_rank=1, replicas=4, visible_devices=8) == ("cuda:2", "cuda:3")
    assert replica_devices(1, rank=3, local_rank=3, replicas=4, visible_devices=4) == ("cuda:3",)


def test_cpu_replicas_are_whole_two_tower_replicas_on_the_cpu():
    for rank in range(2):
        assert replica_devices(2, rank=rank, local_rank=rank, replicas=2, device_type="cpu") == ("cpu", "cpu")


def test_more_replicas_than_devices_fails_in_one_line_naming_train_replicas():
    with pytest.raises(ValueError, match=r"^train\.replicas: 3 replicas x 2 device\(s\) each need 6 CUDA devices, "
                       r"this node sees 4$"):
        replica_devices(2, rank=0, local_rank=0, replicas=3, visible_devices=4)
    with pytest.raises(ValueError, match=r"^train\.replicas: 2 replicas"):
        check_replicas_fit(2, 1, 1)
    check_replicas_fit(2, 1, 2)


def test_local_rank_outside_the_replicas_is_refused():
    with pytest.raises(ValueError, match=r"local rank 2 is outside 0\.\.1"):
        replica_devices(2, rank=2, local_rank=2, replicas=2, visible_devices=8)


def test_ray_resources_count_distinct_gpus():
    assert ray_member_resources(("cuda:0", "cuda:1")) == {"num_cpus": 1, "num_gpus": 2}
    assert ray_member_resources(("cuda:2", "cuda:2"), cpus=3) == {"num_cpus": 3, "num_gpus": 1}
    assert ray_member_resources(("cpu", "cpu")) == {"num_cpus": 1, "num_gpus": 0}
    with pytest.raises(ValueError, match="mps"):
        ray_member_resources(("mps",))


def test_ray_gpu_ids_map_to_local_device_names():
    # Ray hands GPUs 3 and 5 and sets CUDA_VISIBLE_DEVICES=3,5: in the task they are cuda:0, cuda:1.
    assert local_devices_from_ray([3, 5], 2) == ("cuda:0", "cuda:1")
    assert local_devices_from_ray(["6"], 2) == ("cuda:0", "cuda:0")
    assert local_devices_from_ray([], 2) == ("cpu", "cpu")
    assert local_devices_from_ray([1], 1) == ("cuda:0",)
    with pytest.raises(ValueError, match=r"ensemble\.devices: Ray assigned 3 GPUs"):
        local_devices_from_ray([0, 1, 2], 2)
    with pytest.raises(ValueError, match="same GPU twice"):
        local_devices_from_ray([1, 1], 2)


def test_resources_and_mapping_round_trip_for_every_group():
    # What a member asks Ray for is what it then places itself on: same device count, same shape.
    for group in device_groups(EIGHT_GPUS, 2) + [("cuda:0", "cuda:0"), ("cpu", "cpu")]:
        gpus = ray_member_resources(group)["num_gpus"]
        local = local_devices_from_ray(list(range(10, 10 + gpus)), len(group))
        assert len(local) == len(group)
        assert len(set(local)) == len(set(group))
