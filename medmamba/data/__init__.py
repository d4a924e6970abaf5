"""Raw datasets: discovery, image IO, validation, Decathlon conversion, the phantom.

- ``dataset``: dataset.json parsing and case discovery (nnU-Net v2 raw layout)
- ``io``: reading/writing images with their geometry; atomic files and folders
- ``validate``: ``validate_dataset`` -> ``ValidationReport`` (every problem, one file each)
- ``msd``: ``convert_msd`` (Decathlon 4D layout -> nnU-Net v2 raw layout)
- ``phantom``: ``phantom_case`` (arrays in memory) and ``write_phantom_dataset``
- ``parallel``: ``map_with_progress`` (worker processes + rich progress bar)

Nothing is imported here, so importing one module does not pull in the others'
dependencies (scipy, SimpleITK, nibabel).
"""
