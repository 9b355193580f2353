"""Package layout (everything else is in pyproject.toml).

`rewards/` and `evals/` are top-level folders of the repository but install as `dare.rewards` and
`dare.evals`, so dare never squats the generic top-level names `rewards` and `evals`.
"""

from setuptools import find_packages, setup

MAPPED = {"dare.rewards": "rewards", "dare.evals": "evals"}

packages = find_packages(include=["dare", "dare.*"])
for name, folder in MAPPED.items():
    packages += [name + sub[len(folder) :] for sub in find_packages(include=[folder, folder + ".*"])]

setup(packages=packages, package_dir=MAPPED)
