import datetime

import torch_enf

project = 'torch-enf'
author = 'torch-enf contributors'
copyright = f'{datetime.date.today().year}, {author}'
version = release = torch_enf.__version__

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'sphinx.ext.viewcode',
]
autodoc_member_order = 'bysource'
autodoc_typehints = 'none'
napoleon_custom_sections = [('Shapes', 'params_style')]
add_module_names = False
html_theme = 'alabaster'
nitpicky = False
