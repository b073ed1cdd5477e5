// Validates Strimzi custom resources against Strimzi's own model classes (io.strimzi:api).
// Input: one JSON array of resources on stdin. Each is deserialized into its kind's class with
// FAIL_ON_UNKNOWN_PROPERTIES; Strimzi's classes keep unknown fields in additionalProperties
// instead of failing, so the whole object tree is walked and any such field is an error, too.
// Output: one line per resource ("ok Kind/name" or "error Kind/name: why"); exit 1 on any error.
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import io.strimzi.api.kafka.model.common.UnknownPropertyPreserving;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;

public class StrimziCheck {
    static final Map<String, String> KINDS = Map.of(
        "Kafka", "io.strimzi.api.kafka.model.kafka.Kafka",
        "KafkaNodePool", "io.strimzi.api.kafka.model.nodepool.KafkaNodePool",
        "KafkaTopic", "io.strimzi.api.kafka.model.topic.KafkaTopic",
        "KafkaUser", "io.strimzi.api.kafka.model.user.KafkaUser");

    public static void main(String[] args) throws Exception {
        String expectApi = args.length > 0 ? args[0] : "kafka.strimzi.io/v1";
        ObjectMapper mapper = new ObjectMapper()
            .configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, true)
            .configure(DeserializationFeature.FAIL_ON_NULL_FOR_PRIMITIVES, true)
            .configure(DeserializationFeature.FAIL_ON_READING_DUP_TREE_KEY, true);
        JsonNode docs = mapper.readTree(System.in);
        int errors = 0;
        for (JsonNode doc : docs) {
            String kind = doc.path("kind").asText();
            String name = kind + "/" + doc.path("metadata").path("name").asText();
            List<String> problems = new ArrayList<>();
            if (!expectApi.equals(doc.path("apiVersion").asText())) {
                problems.add("apiVersion " + doc.path("apiVersion").asText() + " is not " + expectApi);
            }
            String cls = KINDS.get(kind);
            if (cls == null) {
                problems.add("no Strimzi model for kind " + kind);
            } else {
                try {
                    Object model = mapper.treeToValue(doc, Class.forName(cls));
                    walk(model, kind, problems, new IdentityHashMap<>());
                } catch (Exception e) {
                    problems.add(e.getMessage().split("\n")[0]);
                }
            }
            if (problems.isEmpty()) {
                System.out.println("ok " + name);
            } else {
                errors++;
                System.out.println("error " + name + ": " + String.join("; ", problems));
            }
        }
        System.exit(errors == 0 ? 0 : 1);
    }

    static void walk(Object obj, String path, List<String> problems, Map<Object, Boolean> seen) throws Exception {
        if (obj == null || seen.containsKey(obj)) return;
        if (obj instanceof List<?> list) {
            for (int i = 0; i < list.size(); i++) walk(list.get(i), path + "[" + i + "]", problems, seen);
            return;
        }
        if (obj instanceof Map<?, ?> map) {
            for (Map.Entry<?, ?> e : map.entrySet()) walk(e.getValue(), path + "." + e.getKey(), problems, seen);
            return;
        }
        if (!obj.getClass().getName().startsWith("io.strimzi.")) return;
        seen.put(obj, true);
        if (obj instanceof UnknownPropertyPreserving upp && upp.getAdditionalProperties() != null
                && !upp.getAdditionalProperties().isEmpty()) {
            problems.add("unknown field(s) " + upp.getAdditionalProperties().keySet() + " at " + path);
        }
        for (Method m : obj.getClass().getMethods()) {
            if (m.getParameterCount() != 0 || Modifier.isStatic(m.getModifiers())) continue;
            String n = m.getName();
            if (!n.startsWith("get") || n.equals("getClass") || n.equals("getAdditionalProperties")) continue;
            Object child;
            try { child = m.invoke(obj); } catch (Exception e) { continue; }
            String field = Character.toLowerCase(n.charAt(3)) + n.substring(4);
            if (child != null && !(child instanceof List<?> l && l.isEmpty())) {
                for (java.lang.annotation.Annotation a : m.getAnnotations()) {
                    String an = a.annotationType().getSimpleName();
                    if (an.equals("Deprecated") || an.equals("DeprecatedProperty")) {
                        problems.add("deprecated field " + path + "." + field);
                    } else if (an.equals("PresentInVersions") && !a.toString().contains("v1\"")
                            && !a.toString().matches(".*[^a-z0-9]v1\\b.*")) {
                        problems.add("field " + path + "." + field + " not in this API version (" + a + ")");
                    }
                }
            }
            walk(child, path + "." + field, problems, seen);
        }
    }
}
