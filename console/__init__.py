"""The operator console: a live web page (`heatcache console`) and `heatcache status`, both
built from one pure view model (console/model.py) over the Kafka topics and the catalog."""
