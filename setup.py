from setuptools import find_packages, setup

install_requires = [
    'torch>=2.1,<2.14',
    'torch-geometric>=2.5',
    'torchdiffeq>=0.2.3',
    'numpy',
    'scipy',
    'tqdm',
]

extras_require = {
    'molecules': ['rdkit', 'qm9pack', 'pandas', 'matplotlib'],
    'plot': ['matplotlib'],
    'fast': ['torch-scatter', 'torch-cluster'],
    'test': ['pytest', 'scipy', 'rdkit', 'pandas', 'matplotlib'],
    'docs': ['sphinx>=7'],
}
extras_require['full'] = sorted(
    {dep
     for key in ('molecules', 'plot')
     for dep in extras_require[key]})

setup(
    name='torch-enf',
    version='0.1.0',
    description='E(n)-equivariant graph neural networks and normalizing '
    'flows for PyTorch Geometric',
    long_description=open('README.rst').read(),
    long_description_content_type='text/x-rst',
    python_requires='>=3.9',
    install_requires=install_requires,
    extras_require=extras_require,
    packages=find_packages(include=['torch_enf', 'torch_enf.*']),
    package_data={'torch_enf.pretrained': ['weights/*.pt']},
    entry_points={'console_scripts': ['torch-enf=torch_enf.cli:main']},
    license='MIT',
)
