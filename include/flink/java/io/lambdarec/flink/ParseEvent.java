package io.lambdarec.flink;

import java.time.Instant;
import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.time.format.DateTimeParseException;
import java.time.format.ResolverStyle;
import java.util.regex.Pattern;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.DeserializationFeature;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;
import org.apache.flink.types.Row;

/**
 * One event's JSON, parsed once and checked against the event contract (lambdarec.events), in
 * the JVM: the fields, the event time, and the first problem found as "field: reason" (NULL when
 * the event is valid).
 *
 * <p>Why a function and not JSON_VALUE + CASE in SQL: Flink's JSON_VALUE parses the whole
 * document on every call, and the checks need ~20 calls per event; this parses it once with
 * Jackson (the copy shaded inside flink-dist). The rules, in order, are those of the SQL they
 * replace (and the tests compare each reason's field with the Python contract):
 *
 * <ul>
 *   <li>a field's text is what JSON_VALUE would return: a string's value, a number's or a
 *       boolean's literal; missing, null, an object or an array count as missing;
 *   <li>ids match ^[A-Za-z0-9_.:\-]{1,64}$; event_type is one of the four types;
 *   <li>ts is "yyyy-MM-ddTHH:mm:ss.SSSZ" (UTC, milliseconds) and a real instant, at most
 *       maxFutureSkewMs ahead of the wall clock (hence not deterministic);
 *   <li>category at most 128 characters; price a number (or numeric text) in [0, 1e7];
 *       schema_version absent or 1.
 * </ul>
 */
public class ParseEvent extends ScalarFunction {

    static final Pattern ID = Pattern.compile("^[A-Za-z0-9_.:\\-]{1,64}$");
    static final Pattern TS =
            Pattern.compile("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$");
    static final DateTimeFormatter TS_FORMAT =
            DateTimeFormatter.ofPattern("uuuu-MM-dd'T'HH:mm:ss.SSS'Z'")
                    .withResolverStyle(ResolverStyle.STRICT);
    static final ObjectMapper MAPPER =
            new ObjectMapper().enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

    /** The instant of a contract timestamp, or null when the text is not one. */
    static Instant parseTs(String text) {
        if (text == null || !TS.matcher(text).matches()) {
            return null;
        }
        try {
            return LocalDateTime.parse(text, TS_FORMAT).toInstant(ZoneOffset.UTC);
        } catch (DateTimeParseException e) {
            return null;
        }
    }

    /** JSON_VALUE's text of a top-level field (null: missing, JSON null, object or array). */
    static String text(JsonNode obj, String field) {
        JsonNode node = obj.get(field);
        if (node == null || node.isNull() || node.isContainerNode()) {
            return null;
        }
        return node.isTextual() ? node.textValue() : node.asText();
    }

    /** The object of ``raw``, or null when it is not a JSON object. */
    static JsonNode object(String raw) {
        try {
            JsonNode node = MAPPER.readTree(raw);
            return node != null && node.isObject() ? node : null;
        } catch (Exception e) {
            return null;
        }
    }

    private static Row row(
            String eventId,
            String userId,
            String sessionId,
            String itemId,
            String eventType,
            String category,
            Double price,
            Instant ts,
            String problem) {
        return Row.of(eventId, userId, sessionId, itemId, eventType, category, price, ts, problem);
    }

    private static Row problem(String problem) {
        return row(null, null, null, null, null, null, null, null, problem);
    }

    private static String idProblem(String field, String value) {
        if (value == null) {
            return field + ": required field is missing";
        }
        return ID.matcher(value).matches() ? null : field + ": not a valid id";
    }

    @DataTypeHint(
            "ROW<event_id STRING, user_id STRING, session_id STRING, item_id STRING, "
                    + "event_type STRING, category STRING, price DOUBLE, ts TIMESTAMP_LTZ(3), "
                    + "problem STRING>")
    public Row eval(String raw, Long maxFutureSkewMs) {
        if (raw == null || raw.trim().isEmpty()) {
            return problem("$: empty message");
        }
        JsonNode obj = object(raw);
        if (obj == null) {
            return problem("$: malformed JSON or not a JSON object");
        }
        String eventId = text(obj, "event_id");
        String userId = text(obj, "user_id");
        String sessionId = text(obj, "session_id");
        String itemId = text(obj, "item_id");
        String eventType = text(obj, "event_type");
        String[][] ids = {
            {"event_id", eventId}, {"user_id", userId}, {"session_id", sessionId}, {"item_id", itemId}
        };
        for (String[] id : ids) {
            String bad = idProblem(id[0], id[1]);
            if (bad != null) {
                return problem(bad);
            }
        }
        if (eventType == null) {
            return problem("event_type: required field is missing");
        }
        switch (eventType) {
            case "view":
            case "add_to_cart":
            case "remove_from_cart":
            case "purchase":
                break;
            default:
                return problem(
                        "event_type: unknown event type; use one of view, add_to_cart, "
                                + "remove_from_cart, purchase");
        }
        String tsText = text(obj, "ts");
        if (tsText == null) {
            return problem("ts: required field is missing");
        }
        Instant ts = parseTs(tsText);
        if (ts == null) {
            return problem(
                    "ts: not an ISO-8601 UTC time with milliseconds, e.g. 2024-05-01T12:00:00.000Z");
        }
        String category = text(obj, "category");
        if (category != null && category.length() > 128) {
            return problem("category: longer than 128 characters");
        }
        String priceText = text(obj, "price");
        Double price = null;
        if (priceText != null) {
            JsonNode node = obj.get("price");
            if (node.isNumber()) {
                price = node.doubleValue();
            } else if (node.isTextual()) {
                try {
                    price = Double.valueOf(priceText.trim());
                } catch (NumberFormatException e) {
                    price = null;
                }
            }
            if (price == null || price.isNaN()) {
                return problem("price: not a number");
            }
            if (price < 0 || price > 10_000_000) {
                return problem("price: outside [0, 10000000]");
            }
        }
        String version = text(obj, "schema_version");
        if (version != null && !version.equals("1")) {
            return problem("schema_version: unsupported version");
        }
        long skew = maxFutureSkewMs == null ? 300_000L : maxFutureSkewMs;
        if (ts.toEpochMilli() > System.currentTimeMillis() + skew) {
            return problem(
                    "ts: in the future (beyond the allowed clock skew); check the producer's clock");
        }
        return row(eventId, userId, sessionId, itemId, eventType, category, price, ts, null);
    }

    @Override
    public boolean isDeterministic() {
        return false; // the future check reads the wall clock
    }
}
