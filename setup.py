from setuptools import find_packages, setup

setup(
    name="nnunetv2-ext",
    version="0.1.0",
    description="nnU-Net v2 plugin: multi-encoder U-Net, self-supervised pretraining and weight transfer",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["nnunetv2_ext", "nnunetv2_ext.*"]),
    package_data={"nnunetv2_ext.planning": ["presets/*.json", "presets/README.md"]},  # `plans --preset NAME`
    python_requires=">=3.10",
    install_requires=[
        # torch >= 2.6: torch.serialization.get_unsafe_globals_in_checkpoint and (object, name) safe_globals entries
        # (transfer/checkpoint.py); scripts/test_oldest.sh runs the unit tests on the floors
        "torch>=2.6",
        "nnunetv2>=2.8.1,<2.9",
        "dynamic-network-architectures>=0.4.4,<0.5",  # the floors nnunetv2 2.8.1 sets
        "batchgenerators>=0.25.1",
        "batchgeneratorsv2>=0.3.2",
        "acvl-utils>=0.2.6,<0.3",
        "SimpleITK>=2.2.1",
        "numpy>=1.26",                          # nnunetv2 2.8.1 needs blosc2 >= 3.3.2, which needs numpy >= 1.26
        "scipy>=1.10",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "monai>=1.5,<1.7",                      # HD95/ASSD, Swin UNETR, SegResNet(DS), UNETR, Swin blocks of PCT-Net
        "connected-components-3d>=3.12",        # lesion-wise metrics
        "nibabel>=5.0",                         # NaN/inf check of NIfTI voxels (SimpleITK reads them as 0)
        "einops>=0.6",                          # MONAI's Swin UNETR
    ],
    extras_require={
        "test": ["pytest>=7"],
        # the linters .ci/run runs before the tests (pyproject.toml, .pre-commit-config.yaml), pinned so CI is stable
        "dev": ["ruff==0.17.5", "mypy==2.4.1", "pre-commit==4.7.0"],
        # `nnunetv2_ext proxy`: the MNI152 2009a template and tissue maps ship inside nilearn's wheel (no download)
        "proxy": ["nilearn>=0.10,<0.16"],
    },
    entry_points={"console_scripts": ["nnunetv2_ext=nnunetv2_ext.cli:main",
                                     "nnunetv2_ext_train=nnunetv2_ext.run.train:main"]},
)
