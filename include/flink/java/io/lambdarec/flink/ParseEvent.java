package io.lambdarec.flink;

import java.io.IOException;
import java.time.LocalDate;
import java.time.Month;
import java.time.Year;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.data.TimestampData;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * One event's JSON, parsed once and checked against the event contract (lambdarec.events), in
 * the JVM: the fields, the event time, and the first problem found as "field: reason" (NULL when
 * the event is valid).
 *
 * <p>Why a function and not JSON_VALUE + CASE in SQL: Flink's JSON_VALUE parses the whole
 * document on every call, and the checks need ~20 calls per event; this parses it once with
 * Jackson's streaming parser (the copy shaded inside flink-dist; no tree is built) and returns
 * Flink's internal row (no conversion from an external Row). The rules, in order, are those of the SQL they
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

    static final JsonFactory FACTORY = new JsonFactory();

    /** An id: ^[A-Za-z0-9_.:\\-]{1,64}$ (checked by hand: four per event). */
    static boolean isId(String s) {
        int n = s.length();
        if (n < 1 || n > 64) {
            return false;
        }
        for (int i = 0; i < n; i++) {
            char c = s.charAt(i);
            boolean ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                    || c == '_' || c == '.' || c == ':' || c == '-';
            if (!ok) {
                return false;
            }
        }
        return true;
    }
    /** The epoch milliseconds of a contract timestamp, or {@link Long#MIN_VALUE} when the text
     *  is not one: exactly "uuuu-MM-ddTHH:mm:ss.SSSZ" (24 characters from {@code from}), a real
     *  date and time (what a STRICT DateTimeFormatter accepts; no leap second). Hand-written:
     *  it runs twice per event (here and in {@link EventTime}), and the regex plus formatter
     *  it replaces cost ~1 microsecond. */
    static long parseTsMillis(CharSequence s, int from) {
        if (s.length() - from < 24) {
            return Long.MIN_VALUE;
        }
        int year = digits(s, from, 4);
        int month = sep(s, from + 4, '-') ? digits(s, from + 5, 2) : -1;
        int day = sep(s, from + 7, '-') ? digits(s, from + 8, 2) : -1;
        int hour = sep(s, from + 10, 'T') ? digits(s, from + 11, 2) : -1;
        int minute = sep(s, from + 13, ':') ? digits(s, from + 14, 2) : -1;
        int second = sep(s, from + 16, ':') ? digits(s, from + 17, 2) : -1;
        int milli = sep(s, from + 19, '.') ? digits(s, from + 20, 3) : -1;
        if (year < 0 || month < 1 || month > 12 || day < 1 || hour < 0 || hour > 23
                || minute < 0 || minute > 59 || second < 0 || second > 59 || milli < 0
                || !sep(s, from + 23, 'Z') || day > Month.of(month).length(Year.isLeap(year))) {
            return Long.MIN_VALUE;
        }
        long days = LocalDate.of(year, month, day).toEpochDay();
        return ((days * 24 + hour) * 60 + minute) * 60_000L + second * 1000L + milli;
    }

    private static boolean sep(CharSequence s, int at, char c) {
        return s.charAt(at) == c;
    }

    /** The value of n ASCII digits, or -1. */
    private static int digits(CharSequence s, int at, int n) {
        int v = 0;
        for (int i = at; i < at + n; i++) {
            char c = s.charAt(i);
            if (c < '0' || c > '9') {
                return -1;
            }
            v = v * 10 + (c - '0');
        }
        return v;
    }

    /** The epoch milliseconds of a whole text that is a contract timestamp, else
     *  {@link Long#MIN_VALUE}. */
    static long tsMillis(String text) {
        return text == null || text.length() != 24 ? Long.MIN_VALUE : parseTsMillis(text, 0);
    }

    /** Whether an event time is further ahead of the wall clock than the allowed skew (default
     *  5 minutes): such an event is dead-lettered, and its time is kept out of the watermark. */
    static boolean beyondSkew(long tsMillis, Long maxFutureSkewMs) {
        long skew = maxFutureSkewMs == null ? 300_000L : maxFutureSkewMs;
        return tsMillis > System.currentTimeMillis() + skew;
    }

    /** The earliest event time accepted, 2000-01-01T00:00:00Z (lambdarec.events.MIN_TS). */
    static final long MIN_TS_MILLIS = 946_684_800_000L;

    /** Whether an event time breaks the contract's range [MIN_TS, now + skew]. */
    static boolean outOfRange(long tsMillis, Long maxFutureSkewMs) {
        return tsMillis < MIN_TS_MILLIS || beyondSkew(tsMillis, maxFutureSkewMs);
    }

    /** JSON_VALUE's text of the value the parser is on (null: JSON null, object or array):
     *  a string's value, a number's text as a Jackson tree node prints it, a boolean's literal. */
    static String text(JsonParser parser, JsonToken token) throws IOException {
        switch (token) {
            case VALUE_STRING:
                return parser.getText();
            case VALUE_NUMBER_INT:
                switch (parser.getNumberType()) {
                    case INT:
                        return Integer.toString(parser.getIntValue());
                    case LONG:
                        return Long.toString(parser.getLongValue());
                    default:
                        return parser.getBigIntegerValue().toString();
                }
            case VALUE_NUMBER_FLOAT:
                return Double.toString(parser.getDoubleValue());
            case VALUE_TRUE:
                return "true";
            case VALUE_FALSE:
                return "false";
            case START_OBJECT:
            case START_ARRAY:
                parser.skipChildren();
                return null;
            default:
                return null;
        }
    }

    private static final int PRICE_MISSING = 0;
    private static final int PRICE_NUMBER = 1;
    private static final int PRICE_TEXT = 2;
    private static final int PRICE_OTHER = 3;

    private static RowData row(
            String eventId,
            String userId,
            String sessionId,
            String itemId,
            String eventType,
            String category,
            Double price,
            long tsMillis,
            String problem) {
        return GenericRowData.of(
                StringData.fromString(eventId),
                StringData.fromString(userId),
                StringData.fromString(sessionId),
                StringData.fromString(itemId),
                StringData.fromString(eventType),
                StringData.fromString(category),
                price,
                problem == null ? TimestampData.fromEpochMillis(tsMillis) : null,
                StringData.fromString(problem));
    }

    private static RowData problem(String problem) {
        return row(null, null, null, null, null, null, null, 0L, problem);
    }

    private static String idProblem(String field, String value) {
        if (value == null) {
            return field + ": required field is missing";
        }
        return isId(value) ? null : field + ": not a valid id";
    }

    private static boolean blank(String raw) {
        for (int i = 0, n = raw.length(); i < n; i++) {
            if (raw.charAt(i) > ' ') {
                return false;
            }
        }
        return true;
    }

    @DataTypeHint(
            value =
                    "ROW<event_id STRING, user_id STRING, session_id STRING, item_id STRING, "
                            + "event_type STRING, category STRING, price DOUBLE, "
                            + "ts TIMESTAMP_LTZ(3), problem STRING>",
            bridgedTo = RowData.class)
    public RowData eval(String raw, Long maxFutureSkewMs) {
        if (raw == null || blank(raw)) {
            return problem("$: empty message");
        }
        // One streaming pass over the top-level fields (no tree): the last occurrence of a
        // field wins, as in a Jackson tree; nested values are skipped but still parsed, so
        // malformed JSON anywhere, or anything after the object, is caught.
        String eventId = null;
        String userId = null;
        String sessionId = null;
        String itemId = null;
        String eventType = null;
        String tsText = null;
        String category = null;
        String priceText = null;
        int priceKind = PRICE_MISSING;
        double priceNumber = 0;
        String version = null;
        try (JsonParser parser = FACTORY.createParser(raw)) {
            if (parser.nextToken() != JsonToken.START_OBJECT) {
                return problem("$: malformed JSON or not a JSON object");
            }
            JsonToken token;
            while ((token = parser.nextToken()) == JsonToken.FIELD_NAME) {
                String name = parser.currentName();
                JsonToken value = parser.nextToken();
                switch (name) {
                    case "event_id":
                        eventId = text(parser, value);
                        break;
                    case "user_id":
                        userId = text(parser, value);
                        break;
                    case "session_id":
                        sessionId = text(parser, value);
                        break;
                    case "item_id":
                        itemId = text(parser, value);
                        break;
                    case "event_type":
                        eventType = text(parser, value);
                        break;
                    case "ts":
                        tsText = text(parser, value);
                        break;
                    case "category":
                        category = text(parser, value);
                        break;
                    case "price":
                        priceKind =
                                value.isNumeric()
                                        ? PRICE_NUMBER
                                        : value == JsonToken.VALUE_STRING ? PRICE_TEXT : PRICE_OTHER;
                        if (priceKind == PRICE_NUMBER) {
                            priceNumber = parser.getDoubleValue();
                        }
                        priceText = text(parser, value);
                        break;
                    case "schema_version":
                        version = text(parser, value);
                        break;
                    default:
                        if (value == JsonToken.START_OBJECT || value == JsonToken.START_ARRAY) {
                            parser.skipChildren();
                        }
                }
            }
            if (token != JsonToken.END_OBJECT || parser.nextToken() != null) {
                return problem("$: malformed JSON or not a JSON object");
            }
        } catch (IOException | RuntimeException e) {
            return problem("$: malformed JSON or not a JSON object");
        }
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
        if (tsText == null) {
            return problem("ts: required field is missing");
        }
        long ts = tsMillis(tsText);
        if (ts == Long.MIN_VALUE) {
            return problem(
                    "ts: not an ISO-8601 UTC time with milliseconds, e.g. 2024-05-01T12:00:00.000Z");
        }
        if (category != null && category.length() > 128) {
            return problem("category: longer than 128 characters");
        }
        Double price = null;
        if (priceText != null) {
            if (priceKind == PRICE_NUMBER) {
                price = priceNumber;
            } else if (priceKind == PRICE_TEXT) {
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
        if (version != null && !version.equals("1")) {
            return problem("schema_version: unsupported version");
        }
        if (beyondSkew(ts, maxFutureSkewMs)) {
            return problem(
                    "ts: in the future (beyond the allowed clock skew); check the producer's clock");
        }
        if (ts < MIN_TS_MILLIS) {
            return problem("ts: before 2000-01-01T00:00:00.000Z; send the event's time (UTC)");
        }
        return row(eventId, userId, sessionId, itemId, eventType, category, price, ts, null);
    }

    @Override
    public boolean isDeterministic() {
        return false; // the future check reads the wall clock
    }
}
