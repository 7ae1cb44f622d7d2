"""kdrank engine: data, teacher, augmentation, labelling, student, evaluation (plain typed functions).

Kubeflow wrappers live in `components.kfp`, and import these functions; nothing here imports kfp.
"""
