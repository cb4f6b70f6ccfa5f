package deploy

import (
	"errors"

	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// decodeStrict decodes a YAML (or JSON) document into obj the way the
// Kubernetes API server's strict field validation does: an unknown field, a
// field spelt in another case (encoding/json alone would take
// "scrapeTimeOut" for "scrapeTimeout"), a duplicate field or a value of the
// wrong type is an error.
func decodeStrict(doc []byte, obj any) error {
	js, err := yaml.YAMLToJSONStrict(doc) // duplicate keys fail here
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(js, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}
