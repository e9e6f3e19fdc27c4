"""The remote model stores' test doubles and what the store tests share: a local OSS server
(oss_server.py), a real HDFS (hdfs_cluster.py), the OSS test account, a fast retry policy and an
uploader that mirrors a model folder as a training job would (common.py)."""
