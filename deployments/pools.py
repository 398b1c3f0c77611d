"""Create or update the work pools from the base job templates kept in this package (`aicml pools apply`);
the code is `aicml.kube.pools`."""

from aicml.kube.pools import PoolSpec, apply_pools, pool_specs

__all__ = ["PoolSpec", "apply_pools", "pool_specs"]
