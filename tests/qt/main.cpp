// A console twin of the QWebSocket chat *client* from the article wssgate
// grew from (the CSDN "QT WebSocket" example: Widget::on_connect_clicked and
// Widget::on_sendpb_clicked). It exists to prove that the gateway works with
// that client unchanged, so the Qt calls are the article's own:
//
//   - the socket is `new QWebSocket(name, QWebSocketProtocol::VersionLatest, this)`:
//     the client's name is its origin, which Qt writes into the `Origin`
//     header of the handshake (with toLatin1(): `C1我是客户端` goes out as
//     `C1?????`, `José` as the byte 0xE9);
//   - it connects with `open(QUrl(url))`;
//   - a private message is built exactly as on_sendpb_clicked does:
//     QJsonObject obj; obj["src"]=websocket->origin(); obj["dst"]=cname;
//     obj["msg"]=send; sent as QJsonDocument(obj).toJson(QJsonDocument::Compact);
//     with no recipient, the text goes to the server as it is;
//   - textMessageReceived (Qt::QueuedConnection, as in the article) parses the
//     text with QJsonDocument::fromJson(msg.toUtf8()): not JSON is shown as it
//     is, JSON as its "src" and "msg".
//
// What changed, and only that:
//   - QCoreApplication and stdout instead of widgets: each received message is
//     one line on stdout, "from SRC: MSG" for JSON (the article shows
//     "收到来自"+src+"的消息:"+msg), the raw text otherwise (the article shows
//     "收到消息:"+msg), flushed at once, in UTF-8;
//   - the connected slot prints "connected PEER" (the article appends
//     "已经连接上"+peerAddress()), so a caller can wait for it; disconnects and
//     errors go to stderr;
//   - the text boxes become the command line and stdin:
//         qt_client URL NAME [DST MSG] [--expect N]
//     URL is the server address box, NAME the client name box (trimmed, as
//     in the article). With DST and MSG, one message is sent as soon as the
//     socket is connected, as if typed and sent: DST is the private-chat box
//     (empty: to the server), MSG the text box (trimmed; empty: nothing sent).
//     Afterwards each stdin line is one more click on the send button:
//     "DST<TAB>MSG" for a private message, a line without a tab goes to the
//     server; the end of stdin (Ctrl-D) is the article's disconnect button
//     when there is no --expect;
//   - with --expect N the client closes after N received messages and exits
//     0, or exits 2 if they have not come within 10 seconds (3 if the server
//     closed first, 1 on a socket error). Without it, it runs until the
//     server closes the connection or stdin ends;
//   - the article's guard `if(!websocket && !websocket->isValid())` would
//     dereference a null socket; here it is `||`;
//   - arguments are read as UTF-8 whatever the locale, so the names the
//     caller passes are exactly the names used.

#include <QCoreApplication>
#include <QJsonDocument>
#include <QJsonObject>
#include <QSocketNotifier>
#include <QStringList>
#include <QTimer>
#include <QUrl>
#include <QtWebSockets/QWebSocket>

#include <cstdio>
#include <unistd.h>

static void printLine(const QString &line)
{
    const QByteArray bytes = line.toUtf8();
    std::fwrite(bytes.constData(), 1, static_cast<size_t>(bytes.size()), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
}

static void printError(const QString &line)
{
    const QByteArray bytes = line.toUtf8();
    std::fprintf(stderr, "qt_client: %s\n", bytes.constData());
    std::fflush(stderr);
}

class Widget : public QObject
{
public:
    Widget(const QString &url, const QString &name, int expect, QObject *parent = nullptr)
        : QObject(parent), serverAddr(url), clientName(name), expected(expect)
    {
        websocket = nullptr;
        if (expected >= 0) {
            QTimer::singleShot(10000, this, [this]() {
                if (!done)
                    printError("timed out waiting for messages");
                finish(done ? 0 : 2);
            });
        }
    }

    // on_connect_clicked, the connecting half.
    void on_connect_clicked()
    {
        if (websocket == nullptr) {
            websocket = new QWebSocket(clientName.trimmed(), QWebSocketProtocol::VersionLatest, this);

            // Connected callback.
            QObject::connect(websocket, &QWebSocket::connected, this, [this]() {
                printLine("connected " + websocket->peerAddress().toString());
                isConnecting = true;
                if (!pendingText.isEmpty()) {
                    on_sendpb_clicked(pendingDst, pendingText);
                    pendingText.clear();
                }
                watchStdin();
            });
            // Disconnected callback.
            QObject::connect(websocket, &QWebSocket::disconnected, this, [this]() {
                printError("disconnected from " + websocket->peerAddress().toString());
                isConnecting = false;
                if (expected >= 0)
                    finish(received >= expected ? 0 : 3);
                else
                    finish(0);
            });

            QObject::connect(websocket, QOverload<QAbstractSocket::SocketError>::of(&QWebSocket::error),
                             this, [this](QAbstractSocket::SocketError) {
                printError(websocket->origin() + " error: " + websocket->errorString());
                if (!done)
                    finish(1);
            });

            // Message callback, as in the article (queued).
            connect(websocket, &QWebSocket::textMessageReceived, this, [this](const QString &msg) {
                QJsonDocument jsd = QJsonDocument::fromJson(msg.toUtf8().data());

                if (jsd.isNull()) { // not JSON: from the server
                    printLine(msg);
                } else {
                    QJsonObject jsobj = jsd.object();
                    printLine("from " + jsobj["src"].toString() + ": " + jsobj["msg"].toString());
                }
                ++received;
                if (expected >= 0 && received >= expected && !done) {
                    done = true;
                    websocket->close();
                }
            }, Qt::QueuedConnection);
        }

        websocket->open(QUrl(serverAddr.trimmed()));
    }

    // on_sendpb_clicked: cname is the private-chat box, text the message box.
    void on_sendpb_clicked(const QString &cname_box, const QString &text_box)
    {
        if (!websocket || !websocket->isValid())
            return;

        QString send = text_box.trimmed();
        if (send.isEmpty())
            return;

        QString cname = cname_box.trimmed();
        if (cname.isEmpty()) { // to the server
            websocket->sendTextMessage(send);
        } else {
            // private message
            QJsonObject obj;
            obj["src"] = websocket->origin();
            obj["dst"] = cname;
            obj["msg"] = send;
            QString str(QJsonDocument(obj).toJson(QJsonDocument::Compact));
            websocket->sendTextMessage(str);
        }
    }

    QString pendingDst;
    QString pendingText;

    // Ends the program with the first outcome decided (an error is usually
    // followed by a disconnect, which must not overwrite its code).
    static void finish(int code)
    {
        static bool finished = false;
        if (finished)
            return;
        finished = true;
        QCoreApplication::exit(code);
    }

private:
    // Each stdin line is one more click on the send button.
    void watchStdin()
    {
        if (stdinNotifier)
            return;
        stdinNotifier = new QSocketNotifier(STDIN_FILENO, QSocketNotifier::Read, this);
        QObject::connect(stdinNotifier, &QSocketNotifier::activated, this, [this]() {
            char buf[4096];
            const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
            if (n <= 0) { // end of input: nothing more to send
                stdinNotifier->setEnabled(false);
                if (expected < 0 && isConnecting) { // the "disconnect" click
                    done = true;
                    websocket->close();
                }
                return;
            }
            stdinBuffer.append(buf, static_cast<int>(n));
            int end;
            while ((end = stdinBuffer.indexOf('\n')) >= 0) {
                const QString line = QString::fromUtf8(stdinBuffer.left(end));
                stdinBuffer.remove(0, end + 1);
                const int tab = line.indexOf('\t');
                if (tab >= 0)
                    on_sendpb_clicked(line.left(tab), line.mid(tab + 1));
                else
                    on_sendpb_clicked(QString(), line);
            }
        });
    }

    QWebSocket *websocket;
    QString serverAddr;
    QString clientName;
    bool isConnecting = false;
    int expected;
    int received = 0;
    bool done = false;
    QSocketNotifier *stdinNotifier = nullptr;
    QByteArray stdinBuffer;
};

static int usage()
{
    std::fprintf(stderr, "usage: qt_client URL NAME [DST MSG] [--expect N]\n");
    return 64;
}

int main(int argc, char *argv[])
{
    QCoreApplication app(argc, argv);

    QStringList args;
    int expect = -1;
    for (int i = 1; i < argc; ++i) {
        const QString arg = QString::fromUtf8(argv[i]);
        if (arg == QLatin1String("--expect")) {
            bool ok = false;
            if (i + 1 >= argc)
                return usage();
            expect = QString::fromUtf8(argv[++i]).toInt(&ok);
            if (!ok || expect < 0)
                return usage();
        } else {
            args << arg;
        }
    }
    if (args.size() != 2 && args.size() != 4)
        return usage();

    Widget widget(args[0], args[1], expect);
    if (args.size() == 4) {
        widget.pendingDst = args[2];
        widget.pendingText = args[3];
    }
    widget.on_connect_clicked();
    return app.exec();
}
