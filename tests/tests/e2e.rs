//! The end-to-end suite as one test binary: each module is one area (a file of its own here).
//! One binary instead of one per file links the whole dependency tree once, not 25 times: the
//! suite's build needed several GB of disk and minutes of linking before (CI ran out of disk).
//! One area: `bash scripts/test.sh -E 'test(/^mongodb::/)'`.

mod catalog_cache;
mod daemon;
mod deploy_examples;
mod deploy_image;
mod docker;
mod docker_direct;
mod drill_docker;
mod drill_doctor_daemon;
mod drill_mongo_sqlite;
mod drill_postgres;
mod embedding;
mod encryption;
mod fault_proxy;
mod fleet;
mod hostile_catalog;
mod hostile_postgres;
mod init;
mod leases;
mod library;
mod metrics_prometheus;
mod mongodb;
mod monitoring_examples;
mod notify;
mod postgres;
mod prune_status;
mod s3;
mod sqlite;
mod storage_suite;
mod suspect;
mod uncertain_writes;
mod verify_deep_postgres;
