"""Jobs: per-study ingestion (partitioned) and the retraining job (dataset onwards, ad hoc or weekly)."""

from dagster import AssetSelection, define_asset_job

from pipelines.assets import STUDY_ASSETS, TRAINING_ASSETS

study_job = define_asset_job("ingest_study", selection=AssetSelection.assets(*STUDY_ASSETS),
                             description="raw_dicom -> series_index -> nifti_volumes -> labels for one study")
retrain_job = define_asset_job("retrain", selection=AssetSelection.assets(*TRAINING_ASSETS),
                               description="training_dataset -> ... -> registered_model over all ingested studies")
